package vmfest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"github.com/vmfest/vmfest/spec"
)

var errNotEmpty = syscall.ENOTEMPTY

// The qcow2 layout written for an empty overlay (version 3, 64 KiB
// clusters, 16-bit refcounts), the same shape `qemu-img create -f qcow2 -b`
// writes: cluster 0 the header, its extensions and the backing file name;
// cluster 1 the refcount table; cluster 2 the refcount block; cluster 3 on
// the L1 table, all zero (nothing allocated, every read falls through to the
// backing file).
const (
	qcowClusterBits   = 16
	qcowClusterSize   = 1 << qcowClusterBits
	qcowHeaderLength  = 104
	qcowExtBackingFmt = 0xE2792ACA
	qcowMaxBackingLen = 1023
)

// createOverlay writes a qcow2 overlay at path backed by base. The base is
// only opened for reading (its header or size). The overlay is written
// natively in one write and synced; qemu-img is used for what this writer
// does not cover.
func (l *Local) createOverlay(ctx context.Context, base, baseFormat, path string) error {
	size, err := virtualSize(base, baseFormat)
	if err == nil {
		err = writeOverlay(path, base, baseFormat, size)
	}
	if errors.Is(err, errUnsupported) {
		return l.qemuImgOverlay(ctx, base, baseFormat, path)
	}
	return err
}

var errUnsupported = errors.New("unsupported by the native overlay writer")

// virtualSize reads the guest-visible size of a qcow2 or raw image.
func virtualSize(path, format string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read base image: %w", err)
	}
	defer f.Close()
	switch format {
	case "raw":
		st, err := f.Stat()
		if err != nil {
			return 0, fmt.Errorf("read base image: %w", err)
		}
		return st.Size(), nil
	case "qcow2":
		var hdr [32]byte
		if _, err := io.ReadFull(f, hdr[:]); err != nil {
			return 0, fmt.Errorf("read base image header: %w", err)
		}
		if string(hdr[:4]) != "QFI\xfb" {
			return 0, fmt.Errorf("base image %s: not qcow2", path)
		}
		return int64(binary.BigEndian.Uint64(hdr[24:32])), nil
	}
	return 0, errUnsupported
}

// overlayBackingFormat reads the backing format that vmfest wrote into the
// header of a machine's overlay when it created it (the backing format
// header extension): the base's format for machines whose record predates
// base-format.
func overlayBackingFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read overlay: %w", err)
	}
	defer f.Close()
	var hdr [qcowClusterSize]byte
	n, err := io.ReadFull(f, hdr[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "", fmt.Errorf("read overlay %s: %w", path, err)
	}
	h := hdr[:n]
	if len(h) < qcowHeaderLength || string(h[:4]) != "QFI\xfb" || binary.BigEndian.Uint32(h[4:8]) < 3 {
		return "", fmt.Errorf("overlay %s: not a version 3 qcow2 header", path)
	}
	off := int(binary.BigEndian.Uint32(h[100:104])) // header_length
	for off >= qcowHeaderLength && off+8 <= len(h) {
		typ := binary.BigEndian.Uint32(h[off:])
		size := int(binary.BigEndian.Uint32(h[off+4:]))
		off += 8
		if typ == 0 || size > len(h)-off {
			break
		}
		if typ == qcowExtBackingFmt {
			switch format := string(h[off : off+size]); format {
			case spec.DiskFormatRaw, spec.DiskFormatQCOW2:
				return format, nil
			default:
				return "", fmt.Errorf("overlay %s: backing format %q: allowed: raw, qcow2", path, format)
			}
		}
		off += (size + 7) &^ 7
	}
	return "", fmt.Errorf("overlay %s: no backing format in its header", path)
}

// writeOverlay writes the empty overlay file.
func writeOverlay(path, backing, backingFormat string, size int64) error {
	if len(backing) > qcowMaxBackingLen || size <= 0 {
		return errUnsupported
	}
	perL1 := int64(qcowClusterSize) * (qcowClusterSize / 8) // bytes one L1 entry maps
	l1Size := (size + perL1 - 1) / perL1
	l1Clusters := (l1Size*8 + qcowClusterSize - 1) / qcowClusterSize
	if 3+l1Clusters > qcowClusterSize/2 { // one refcount block must cover the metadata
		return errUnsupported
	}
	l1Offset := int64(3 * qcowClusterSize)

	var b bytes.Buffer
	be := func(v any) { binary.Write(&b, binary.BigEndian, v) }
	b.WriteString("QFI\xfb")
	be(uint32(3)) // version
	fmtPad := (len(backingFormat) + 7) &^ 7
	backingOffset := qcowHeaderLength + 8 + fmtPad + 8
	be(uint64(backingOffset))
	be(uint32(len(backing)))
	be(uint32(qcowClusterBits))
	be(uint64(size))
	be(uint32(0)) // crypt_method
	be(uint32(l1Size))
	be(uint64(l1Offset))
	be(uint64(qcowClusterSize)) // refcount_table_offset: cluster 1
	be(uint32(1))               // refcount_table_clusters
	be(uint32(0))               // nb_snapshots
	be(uint64(0))               // snapshots_offset
	be(uint64(0))               // incompatible_features
	be(uint64(0))               // compatible_features
	be(uint64(0))               // autoclear_features
	be(uint32(4))               // refcount_order: 16-bit refcounts
	be(uint32(qcowHeaderLength))
	// Header extension: the backing file's format.
	be(uint32(qcowExtBackingFmt))
	be(uint32(len(backingFormat)))
	b.WriteString(backingFormat)
	b.Write(make([]byte, fmtPad-len(backingFormat)))
	be(uint64(0)) // end of extensions
	b.WriteString(backing)
	if b.Len() > qcowClusterSize {
		return errUnsupported
	}

	file := make([]byte, l1Offset+l1Size*8)
	copy(file, b.Bytes())
	// Refcount table: one block, at cluster 2.
	binary.BigEndian.PutUint64(file[qcowClusterSize:], 2*qcowClusterSize)
	// Refcount block: header, table, block and L1 clusters are in use.
	for c := int64(0); c < 3+l1Clusters; c++ {
		binary.BigEndian.PutUint16(file[2*qcowClusterSize+2*c:], 1)
	}

	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600) // what the guest writes is its own
	if err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	if _, err := f.Write(file); err != nil {
		f.Close()
		return fmt.Errorf("create overlay: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("create overlay: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	return nil
}

// qemuImgOverlay creates the overlay with qemu-img.
func (l *Local) qemuImgOverlay(ctx context.Context, base, baseFormat, path string) error {
	cmd := exec.CommandContext(ctx, l.cfg.QEMUImg, "create", "-q", "-f", "qcow2", "-F", baseFormat, "-b", base, path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("create overlay with qemu-img: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
