package image

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/vmfest/vmfest/disk"
)

// The compressions Prepare reads, told apart by their first bytes.
const (
	CompressionNone  = "none"
	CompressionGzip  = "gzip"
	CompressionXZ    = "xz"
	CompressionZstd  = "zstd"
	CompressionBzip2 = "bzip2"
)

// sniffCompression names the compression of a stream from its first bytes.
func sniffCompression(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return CompressionGzip
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return CompressionXZ
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return CompressionZstd
	case len(head) >= 10 && bytes.HasPrefix(head, []byte("BZh")) && head[3] >= '1' && head[3] <= '9' &&
		(bytes.Equal(head[4:10], []byte{0x31, 0x41, 0x59, 0x26, 0x53, 0x59}) || // a block
			bytes.Equal(head[4:10], []byte{0x17, 0x72, 0x45, 0x38, 0x50, 0x90})): // end of an empty stream
		return CompressionBzip2
	}
	return CompressionNone
}

// decompress returns the decompressed stream of r, sniffing its
// compression. The returned closer releases the decoder.
func decompress(r *bufio.Reader) (io.Reader, string, func(), error) {
	head, _ := r.Peek(16)
	kind := sniffCompression(head)
	switch kind {
	case CompressionGzip:
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, kind, nil, fmt.Errorf("%w: gzip header: %v", ErrCorrupt, err)
		}
		return z, kind, func() { z.Close() }, nil
	case CompressionXZ:
		z, err := xz.NewReader(r)
		if err != nil {
			return nil, kind, nil, fmt.Errorf("%w: xz header: %v", ErrCorrupt, err)
		}
		return z, kind, func() {}, nil
	case CompressionZstd:
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, kind, nil, fmt.Errorf("%w: zstd header: %v", ErrCorrupt, err)
		}
		return z, kind, z.Close, nil
	case CompressionBzip2:
		return bzip2.NewReader(r), kind, func() {}, nil
	}
	return r, kind, func() {}, nil
}

// The disk formats Prepare reads, as qemu-img names them.
const (
	FormatQCOW2 = "qcow2"
	FormatRaw   = "raw"
	FormatVDI   = "vdi"
	FormatVMDK  = "vmdk"
	FormatVHD   = "vpc"
	FormatVHDX  = "vhdx"
)

// sniffFormat names the disk format from the file's first bytes and its
// last 512 (a fixed VHD has its only footer there). It returns "" when
// the content looks like no disk image at all: raw images have no magic,
// so a file is taken as raw only when its size is a whole number of
// 512-byte sectors and its first sector is not text (an HTML error page,
// a JSON document).
func sniffFormat(head, tail []byte, size int64) string {
	switch {
	case bytes.HasPrefix(head, []byte(disk.QCOW2Magic)):
		return FormatQCOW2
	case len(head) >= 0x44 && binary.LittleEndian.Uint32(head[0x40:]) == 0xbeda107f:
		return FormatVDI
	case bytes.HasPrefix(head, []byte("KDMV")), bytes.HasPrefix(head, []byte("COWD")):
		return FormatVMDK
	case bytes.HasPrefix(head, []byte("vhdxfile")):
		return FormatVHDX
	case bytes.HasPrefix(head, []byte("conectix")), bytes.HasPrefix(tail, []byte("conectix")):
		return FormatVHD
	}
	if size <= 0 || size%512 != 0 || looksLikeText(head) || bytes.HasPrefix(head, []byte("# Disk DescriptorFile")) {
		return ""
	}
	return FormatRaw
}

// describe says what non-disk content looks like, for error messages. It
// names the kind of content and its size and never quotes it: the bytes
// may be a page the server was not meant to show (a login page, a config
// file) and errors travel to remote callers.
func describe(head []byte, size int64) string {
	switch {
	case size == 0:
		return "the file is empty"
	case bytes.HasPrefix(head, []byte("# Disk DescriptorFile")):
		return "it is a VMDK descriptor whose data is in other files; give a single-file (monolithic or streamOptimized) VMDK, or an .ova"
	case looksLikeText(head):
		return fmt.Sprintf("it is text: %s of %d bytes", textKind(head), size)
	case size%512 != 0:
		return fmt.Sprintf("its size, %d bytes, is not a whole number of 512-byte sectors", size)
	}
	return "its format is not recognised"
}

// textKind names a kind of text from its first bytes.
func textKind(head []byte) string {
	t := bytes.ToLower(bytes.TrimSpace(bytes.TrimPrefix(head, []byte("\xef\xbb\xbf"))))
	switch {
	case bytes.HasPrefix(t, []byte("<!doctype html")), bytes.HasPrefix(t, []byte("<html")),
		bytes.Contains(t, []byte("<html")), bytes.Contains(t, []byte("<body")):
		return "an HTML page"
	case bytes.HasPrefix(t, []byte("<?xml")), bytes.HasPrefix(t, []byte("<")):
		return "an XML document"
	case bytes.HasPrefix(t, []byte("{")), bytes.HasPrefix(t, []byte("[")):
		return "a JSON document"
	}
	return "a text file"
}

// looksLikeText says the first sector is printable UTF-8 text.
func looksLikeText(head []byte) bool {
	b := head
	if len(b) > 512 {
		b = b[:512]
	}
	b = bytes.TrimRight(b, "\x00") // text padded to a sector is still text
	if len(b) == 0 || !utf8.Valid(trimPartialRune(b)) {
		return false
	}
	for _, c := range b {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	return true
}

// trimPartialRune drops a rune cut at the end of b.
func trimPartialRune(b []byte) []byte {
	for i := 0; i < utf8.UTFMax && len(b) > 0; i++ {
		if utf8.Valid(b) {
			return b
		}
		b = b[:len(b)-1]
	}
	return b
}

// isTar says the stream is a tar archive (a .box or an .ova).
func isTar(head []byte) bool {
	return len(head) >= 262 && bytes.Equal(head[257:262], []byte("ustar"))
}
