package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/vmfest/vmfest/disk"
)

// The native inspector reads a disk's headers as the formats' own
// specifications lay them out, before qemu-img ever opens the file (the
// way OpenStack's format_inspector screens uploads): qemu-img follows the
// references an image holds (backing files, data files, VMDK extents), so
// an image that holds any is refused here. Every read is bounded by a
// constant of this file, never by a size a header claims.

// Inspection is what the native inspector read from a disk's headers.
type Inspection struct {
	Format      string // qemu-img's name: qcow2, raw, vmdk, vdi, vpc, vhdx
	VirtualSize int64  // bytes, as the guest sees it
}

// ErrNotSelfContained: the disk refers to other files (backing file, data file, extents).
var ErrNotSelfContained = errors.New("the disk refers to other files")

// ErrDiskTooLarge: the disk is larger than Config.MaxDiskSize or
// Config.MaxVirtualSize allow.
var ErrDiskTooLarge = errors.New("disk too large")

// imageError is an error of an untrusted image that is also one of the
// broader kinds (ErrNotDiskImage), so callers that map those (the API's
// 422) need not know each new one.
type imageError struct {
	kind error
	msg  string
}

func (e *imageError) Error() string { return e.kind.Error() + ": " + e.msg }

func (e *imageError) Is(target error) bool { return target == e.kind || target == ErrNotDiskImage }

// notSelfContained is an error wrapping ErrNotSelfContained and ErrNotDiskImage.
func notSelfContained(format string, args ...any) error {
	return &imageError{kind: ErrNotSelfContained, msg: fmt.Sprintf(format, args...) + "; vmfest takes only self-contained images"}
}

// tooLarge is an error wrapping ErrDiskTooLarge and ErrNotDiskImage.
func tooLarge(format string, args ...any) error {
	return &imageError{kind: ErrDiskTooLarge, msg: fmt.Sprintf(format, args...)}
}

// Bounds of the inspector's reads.
const (
	// maxVMDKDescriptor bounds an embedded VMDK descriptor (qemu-img's
	// own limit is 1 MiB).
	maxVMDKDescriptor = 1 << 20
	// maxVirtualSize is the largest virtual size any format may claim
	// (qemu's own limit, 2^63 - 512, rounded down to a sane 64 PiB);
	// Config.MaxVirtualSize is the cap Prepare applies.
	maxVirtualSize = 64 << 50
)

// InspectFile reads the headers of the disk at path. format "" sniffs it;
// otherwise the file must be of that format. It refuses, with an error
// wrapping ErrNotSelfContained, ErrCorrupt or ErrNotDiskImage, any disk
// that refers to another file or whose headers do not hold together.
func InspectFile(path, format string) (Inspection, error) {
	f, err := os.Open(path)
	if err != nil {
		return Inspection{}, fmt.Errorf("disk: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Inspection{}, fmt.Errorf("disk: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return Inspection{}, fmt.Errorf("%w: %s is not a regular file", ErrNotDiskImage, path)
	}
	return inspectReader(f, fi.Size(), format)
}

// CheckMachineDisk is InspectFile for a disk a machine runs from that is
// not an installed model: only qcow2 or raw are allowed.
func CheckMachineDisk(path, format string) (Inspection, error) {
	switch format {
	case "", FormatQCOW2, FormatRaw:
	default:
		return Inspection{}, fmt.Errorf("%w: format %q: a machine's disk must be qcow2 or raw", ErrNotDiskImage, format)
	}
	in, err := InspectFile(path, format)
	if err != nil {
		return in, err
	}
	if in.Format != FormatQCOW2 && in.Format != FormatRaw {
		return in, fmt.Errorf("%w: %s is a %s disk; a machine's disk must be qcow2 or raw (install it as a model to convert it)", ErrNotDiskImage, path, in.Format)
	}
	return in, nil
}

// inspectReader is InspectFile on any random-access content of size bytes.
func inspectReader(r io.ReaderAt, size int64, format string) (Inspection, error) {
	if size < 0 {
		return Inspection{}, fmt.Errorf("%w: negative size", ErrCorrupt)
	}
	head := readAtMost(r, 0, 4096, size)
	var tail []byte
	if size >= 512 {
		tail = readAtMost(r, size-512, 512, size)
	}
	sniffed := sniffFormat(head, tail, size)
	if bytes.HasPrefix(head, []byte("# Disk DescriptorFile")) {
		return Inspection{}, notSelfContained("it is a VMDK descriptor whose data is in other files; give a single-file (monolithicSparse or streamOptimized) VMDK")
	}
	switch {
	case format == "":
		if sniffed == "" {
			return Inspection{}, fmt.Errorf("%w: %s", ErrNotDiskImage, describe(head, size))
		}
		format = sniffed
	case format == FormatRaw:
		// Raw is raw whatever its first bytes hold: opened as raw, a
		// qcow2 header inside is only data.
	case format != sniffed:
		if sniffed == "" {
			sniffed = "unrecognised content"
		}
		return Inspection{}, fmt.Errorf("%w: the disk was given as %s but its headers are %s", ErrNotDiskImage, format, sniffed)
	}
	var in Inspection
	var err error
	switch format {
	case FormatQCOW2:
		in, err = inspectQCOW2(r, size)
	case FormatVMDK:
		in, err = inspectVMDK(r, size)
	case FormatVHDX:
		in, err = inspectVHDX(r, size)
	case FormatVDI:
		in, err = inspectVDI(r, size)
	case FormatVHD:
		in, err = inspectVHD(r, size, tail)
	case FormatRaw:
		in = Inspection{VirtualSize: size}
	default:
		return Inspection{}, fmt.Errorf("%w: format %q: allowed are qcow2, raw, vmdk, vdi, vpc, vhdx", ErrNotDiskImage, format)
	}
	if err != nil {
		return Inspection{}, err
	}
	in.Format = format
	if in.VirtualSize < 0 || in.VirtualSize > maxVirtualSize {
		return Inspection{}, fmt.Errorf("%w: %s virtual size %d is out of range", ErrCorrupt, format, in.VirtualSize)
	}
	return in, nil
}

// readAtMost reads up to n bytes at off (fewer at the end of the content).
func readAtMost(r io.ReaderAt, off, n, size int64) []byte {
	if off < 0 || off >= size || n <= 0 {
		return nil
	}
	n = min(n, size-off)
	b := make([]byte, n)
	m, _ := r.ReadAt(b, off)
	return b[:m]
}

// readExact reads exactly n bytes at off, n bounded by the caller.
func readExact(r io.ReaderAt, off, n, size int64, what string) ([]byte, error) {
	if off < 0 || n < 0 || off > size || n > size-off {
		return nil, fmt.Errorf("%w: %s (%d bytes at %d) lies outside the file (%d bytes)", ErrCorrupt, what, n, off, size)
	}
	b := make([]byte, n)
	if _, err := r.ReadAt(b, off); err != nil && !(errors.Is(err, io.EOF) && n == 0) {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, what, err)
	}
	return b, nil
}

// inspectQCOW2 reads a qcow2 header through package disk, which holds
// the layout (docs/interop/qcow2.txt) for all of vmfest.
func inspectQCOW2(r io.ReaderAt, size int64) (Inspection, error) {
	b, err := readExact(r, 0, disk.QCOW2HeaderV3Length, size, "the qcow2 header")
	if err != nil {
		return Inspection{}, err
	}
	h, err := disk.ParseQCOW2Header(b)
	if err != nil {
		return Inspection{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if h.Version != 2 && h.Version != 3 {
		return Inspection{}, fmt.Errorf("%w: qcow2 version %d: allowed are 2 and 3", ErrCorrupt, h.Version)
	}
	if h.ClusterBits < 9 || h.ClusterBits > 21 {
		return Inspection{}, fmt.Errorf("%w: qcow2 cluster bits %d: allowed are 9 to 21", ErrCorrupt, h.ClusterBits)
	}
	if h.BackingFileOffset != 0 || h.BackingFileSize != 0 {
		return Inspection{}, notSelfContained("the qcow2 image names a backing file")
	}
	if h.CryptMethod != 0 {
		return Inspection{}, fmt.Errorf("%w: the qcow2 image is encrypted (method %d); vmfest takes only unencrypted images", ErrNotDiskImage, h.CryptMethod)
	}
	vsize := h.Size
	if vsize > maxVirtualSize {
		return Inspection{}, fmt.Errorf("%w: qcow2 virtual size %d is out of range", ErrCorrupt, vsize)
	}
	hdrLen := uint64(h.HeaderLength) // 72 for version 2
	if h.Version == 3 {
		incompat := h.IncompatibleFeatures
		if incompat&disk.QCOW2IncompatExternalData != 0 {
			return Inspection{}, notSelfContained("the qcow2 image keeps its data in an external file")
		}
		if incompat&disk.QCOW2IncompatCorrupt != 0 {
			return Inspection{}, fmt.Errorf("%w: the qcow2 image is marked corrupt", ErrCorrupt)
		}
		if unknown := incompat &^ disk.QCOW2IncompatKnown; unknown != 0 {
			return Inspection{}, fmt.Errorf("%w: the qcow2 image has unknown incompatible features %#x", ErrCorrupt, unknown)
		}
		if hdrLen < disk.QCOW2HeaderV3Length || hdrLen%8 != 0 {
			return Inspection{}, fmt.Errorf("%w: qcow2 header length %d: must be at least 104 and a multiple of 8", ErrCorrupt, hdrLen)
		}
	}
	// Header extensions lie in the first cluster, after the header.
	cluster := uint64(1) << h.ClusterBits
	if hdrLen >= cluster {
		return Inspection{}, fmt.Errorf("%w: qcow2 header length %d does not fit in a %d-byte cluster", ErrCorrupt, hdrLen, cluster)
	}
	ext := readAtMost(r, int64(hdrLen), int64(cluster-hdrLen), size)
	be := binary.BigEndian
	for off := 0; ; {
		if off+8 > len(ext) {
			break // cut short: qemu stops here as well (the end marker is implied)
		}
		typ, n := be.Uint32(ext[off:]), uint64(be.Uint32(ext[off+4:]))
		off += 8
		switch typ {
		case disk.QCOW2ExtEnd:
			return Inspection{VirtualSize: int64(vsize)}, nil
		case disk.QCOW2ExtDataFile:
			return Inspection{}, notSelfContained("the qcow2 image names an external data file")
		case disk.QCOW2ExtCrypto:
			return Inspection{}, fmt.Errorf("%w: the qcow2 image carries an encryption header; vmfest takes only unencrypted images", ErrNotDiskImage)
		}
		if n > uint64(len(ext)-off) {
			return Inspection{}, fmt.Errorf("%w: a qcow2 header extension (%#x, %d bytes) runs past the first cluster", ErrCorrupt, typ, n)
		}
		off += int((n + 7) &^ 7)
	}
	return Inspection{VirtualSize: int64(vsize)}, nil
}

// VMDK sparse extent header (VMware's Virtual Disk Format 5.0).
func inspectVMDK(r io.ReaderAt, size int64) (Inspection, error) {
	h, err := readExact(r, 0, 512, size, "the VMDK header")
	if err != nil {
		return Inspection{}, err
	}
	if bytes.HasPrefix(h, []byte("COWD")) {
		return Inspection{}, notSelfContained("the VMDK is an ESX COWD (redo log) extent, which depends on a parent disk")
	}
	in, err := checkVMDKHeader(r, size, h)
	if err != nil {
		return Inspection{}, err
	}
	// A streamOptimized disk may keep its grain directory at the end, and
	// qemu then reads the whole header again from the footer: check that
	// one the same way, and that it agrees.
	if binary.LittleEndian.Uint64(h[56:]) == vmdkGDAtEnd {
		f, err := readExact(r, size-1024, 512, size, "the VMDK footer")
		if err != nil {
			return Inspection{}, err
		}
		if !bytes.HasPrefix(f, []byte("KDMV")) {
			return Inspection{}, fmt.Errorf("%w: the VMDK keeps its grain directory at the end but has no footer", ErrCorrupt)
		}
		fin, err := checkVMDKHeader(r, size, f)
		if err != nil {
			return Inspection{}, err
		}
		if fin != in {
			return Inspection{}, fmt.Errorf("%w: the VMDK footer and header disagree on the capacity", ErrCorrupt)
		}
	}
	return in, nil
}

// vmdkGDAtEnd in gdOffset says the grain directory is found from the footer.
const vmdkGDAtEnd = 0xffffffffffffffff

// checkVMDKHeader checks one sparse header (the header or the footer)
// and its embedded descriptor.
func checkVMDKHeader(r io.ReaderAt, size int64, h []byte) (Inspection, error) {
	le := binary.LittleEndian
	version := le.Uint32(h[4:])
	capacity := le.Uint64(h[12:])
	grain := le.Uint64(h[20:])
	descOff, descLen := le.Uint64(h[28:]), le.Uint64(h[36:])
	if version < 1 || version > 3 {
		return Inspection{}, fmt.Errorf("%w: VMDK version %d: allowed are 1 to 3", ErrCorrupt, version)
	}
	if capacity == 0 {
		// qemu then takes the extents from the embedded descriptor, by
		// file name: the whole of finding 1 of issue 10.
		return Inspection{}, notSelfContained("the VMDK header has capacity 0, so its extents come from its descriptor by file name")
	}
	if capacity > maxVirtualSize/512 {
		return Inspection{}, fmt.Errorf("%w: VMDK capacity %d sectors is out of range", ErrCorrupt, capacity)
	}
	if grain == 0 || grain&(grain-1) != 0 || grain > 1<<16 {
		return Inspection{}, fmt.Errorf("%w: VMDK grain size %d sectors: must be a power of two up to 65536", ErrCorrupt, grain)
	}
	if descOff == 0 || descLen == 0 {
		return Inspection{}, fmt.Errorf("%w: the VMDK has no embedded descriptor", ErrCorrupt)
	}
	if descLen > maxVMDKDescriptor/512 || descOff > uint64(size)/512 {
		return Inspection{}, fmt.Errorf("%w: the VMDK descriptor (%d sectors at sector %d) is out of range", ErrCorrupt, descLen, descOff)
	}
	desc, err := readExact(r, int64(descOff)*512, int64(descLen)*512, size, "the VMDK descriptor")
	if err != nil {
		return Inspection{}, err
	}
	if i := bytes.IndexByte(desc, 0); i >= 0 {
		desc = desc[:i]
	}
	if err := checkVMDKDescriptor(string(desc), capacity); err != nil {
		return Inspection{}, err
	}
	return Inspection{VirtualSize: int64(capacity) * 512}, nil
}

// checkVMDKDescriptor allows only a monolithicSparse or streamOptimized
// descriptor whose every extent is SPARSE and named without a directory,
// and whose extents add up to the header's capacity.
func checkVMDKDescriptor(desc string, capacity uint64) error {
	var createTypes, extents int
	var total uint64
	for line := range strings.SplitSeq(desc, "\n") {
		line = strings.TrimSpace(line)
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(line, "#") {
			continue
		}
		switch fields[0] {
		case "RW", "RDONLY", "NOACCESS":
			// An extent line (qemu reads the RW ones; all are checked).
		default:
			if k, v, ok := strings.Cut(line, "="); ok && strings.Contains(k, "createType") {
				switch strings.Trim(strings.TrimSpace(v), "\"") {
				case "monolithicSparse", "streamOptimized":
					createTypes++
				default:
					return notSelfContained("the VMDK createType is not one of the allowed: monolithicSparse, streamOptimized")
				}
			}
			continue
		}
		if len(fields) < 4 {
			return fmt.Errorf("%w: a VMDK extent line is incomplete", ErrCorrupt)
		}
		if fields[2] != "SPARSE" {
			return notSelfContained("the VMDK has a %s extent; only SPARSE extents inside the file itself are allowed", safeWord(fields[2]))
		}
		name := fields[3]
		if len(fields) > 4 || len(name) < 3 || name[0] != '"' || name[len(name)-1] != '"' {
			return notSelfContained("a VMDK extent line holds more than a quoted file name after SPARSE")
		}
		if strings.ContainsAny(name[1:len(name)-1], "/\\\"") {
			return notSelfContained("the VMDK names an extent in another directory")
		}
		n, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil || n > maxVirtualSize/512 {
			return fmt.Errorf("%w: a VMDK extent size is not a sector count", ErrCorrupt)
		}
		extents++
		total += n
	}
	if createTypes == 0 {
		return notSelfContained("the VMDK descriptor has no createType; allowed are monolithicSparse and streamOptimized")
	}
	if extents != 1 {
		return notSelfContained("the VMDK descriptor has %d extents; a single-file VMDK has exactly one", extents)
	}
	if total != capacity {
		return fmt.Errorf("%w: the VMDK extent holds %d sectors but the header says %d", ErrCorrupt, total, capacity)
	}
	return nil
}

// safeWord returns a short word of an image's text fit for an error
// message (letters only), or "unknown".
func safeWord(s string) string {
	if len(s) > 16 {
		return "unknown"
	}
	for _, c := range s {
		if (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') {
			return "unknown"
		}
	}
	return s
}

// msGUID encodes a GUID as VHDX stores it (the first three fields little-endian).
func msGUID(s string) [16]byte {
	var g [16]byte
	h := strings.ReplaceAll(s, "-", "")
	for i := 0; i < 16; i++ {
		v, _ := strconv.ParseUint(h[2*i:2*i+2], 16, 8)
		g[i] = byte(v)
	}
	g[0], g[1], g[2], g[3] = g[3], g[2], g[1], g[0]
	g[4], g[5] = g[5], g[4]
	g[6], g[7] = g[7], g[6]
	return g
}

// VHDX (MS-VHDX 2.0) region and metadata item identifiers.
var (
	vhdxRegionMetadata = "8B7CA206-4790-4B9A-B8FE-575F050F886E"
	vhdxFileParameters = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
	vhdxVirtualSize    = "2FA54224-CD1B-4876-B211-5DBED83BF4B8"
	vhdxParentLocator  = "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"
)

func inspectVHDX(r io.ReaderAt, size int64) (Inspection, error) {
	le := binary.LittleEndian
	meta := msGUID(vhdxRegionMetadata)
	var metaOff, metaLen uint64
	found := false
	// Two copies of the region table, at 192 KiB and 256 KiB; qemu needs
	// the first to be valid, and so does this.
	rt, err := readExact(r, 192<<10, 64<<10, size, "the VHDX region table")
	if err != nil {
		return Inspection{}, err
	}
	if !bytes.HasPrefix(rt, []byte("regi")) {
		return Inspection{}, fmt.Errorf("%w: the VHDX region table has no signature", ErrCorrupt)
	}
	count := le.Uint32(rt[8:])
	if count > 2047 {
		return Inspection{}, fmt.Errorf("%w: the VHDX region table has %d entries (at most 2047)", ErrCorrupt, count)
	}
	for i := uint32(0); i < count; i++ {
		e := rt[16+32*i:]
		if bytes.Equal(e[:16], meta[:]) {
			metaOff, metaLen, found = le.Uint64(e[16:]), uint64(le.Uint32(e[24:])), true
		}
	}
	if !found || metaLen < 64<<10 || metaOff%(1<<20) != 0 {
		return Inspection{}, fmt.Errorf("%w: the VHDX has no valid metadata region", ErrCorrupt)
	}
	if metaOff > uint64(size) {
		return Inspection{}, fmt.Errorf("%w: the VHDX metadata region lies outside the file", ErrCorrupt)
	}
	mt, err := readExact(r, int64(metaOff), 64<<10, size, "the VHDX metadata table")
	if err != nil {
		return Inspection{}, err
	}
	if !bytes.HasPrefix(mt, []byte("metadata")) {
		return Inspection{}, fmt.Errorf("%w: the VHDX metadata table has no signature", ErrCorrupt)
	}
	n := le.Uint16(mt[10:])
	if n > 2047 {
		return Inspection{}, fmt.Errorf("%w: the VHDX metadata table has %d entries (at most 2047)", ErrCorrupt, n)
	}
	params, vsizeID, parent := msGUID(vhdxFileParameters), msGUID(vhdxVirtualSize), msGUID(vhdxParentLocator)
	item := func(e []byte, want int64) ([]byte, error) {
		off, ln := int64(le.Uint32(e[16:])), int64(le.Uint32(e[20:]))
		if ln < want || off < 64<<10 || uint64(off+want) > metaLen {
			return nil, fmt.Errorf("%w: a VHDX metadata item lies outside its region", ErrCorrupt)
		}
		return readExact(r, int64(metaOff)+off, want, size, "a VHDX metadata item")
	}
	var vsize int64 = -1
	var haveParams bool
	for i := 0; i < int(n); i++ {
		e := mt[32+32*i:]
		id := e[:16]
		switch {
		case bytes.Equal(id, parent[:]):
			return Inspection{}, notSelfContained("the VHDX is a differencing disk (it has a parent locator)")
		case bytes.Equal(id, params[:]):
			b, err := item(e, 8)
			if err != nil {
				return Inspection{}, err
			}
			if le.Uint32(b[4:])&2 != 0 {
				return Inspection{}, notSelfContained("the VHDX is a differencing disk (HasParent is set)")
			}
			haveParams = true
		case bytes.Equal(id, vsizeID[:]):
			b, err := item(e, 8)
			if err != nil {
				return Inspection{}, err
			}
			v := le.Uint64(b)
			if v > maxVirtualSize {
				return Inspection{}, fmt.Errorf("%w: VHDX virtual size %d is out of range", ErrCorrupt, v)
			}
			vsize = int64(v)
		}
	}
	if !haveParams || vsize < 0 {
		return Inspection{}, fmt.Errorf("%w: the VHDX lacks its file parameters or virtual size", ErrCorrupt)
	}
	return Inspection{VirtualSize: vsize}, nil
}

// VDI image types (VirtualBox's VDIHeader1).
const (
	vdiDynamic = 1
	vdiFixed   = 2
)

func inspectVDI(r io.ReaderAt, size int64) (Inspection, error) {
	h, err := readExact(r, 0, 0x200, size, "the VDI header")
	if err != nil {
		return Inspection{}, err
	}
	le := binary.LittleEndian
	if v := le.Uint32(h[0x44:]); v>>16 != 1 {
		return Inspection{}, fmt.Errorf("%w: VDI version %#x: allowed is 1.x", ErrCorrupt, v)
	}
	switch t := le.Uint32(h[0x4c:]); t {
	case vdiDynamic, vdiFixed:
	case 4:
		return Inspection{}, notSelfContained("the VDI is a differencing image")
	default:
		return Inspection{}, notSelfContained("VDI image type %d: allowed are dynamic (1) and fixed (2)", t)
	}
	vsize := le.Uint64(h[0x170:])
	if vsize > maxVirtualSize {
		return Inspection{}, fmt.Errorf("%w: VDI disk size %d is out of range", ErrCorrupt, vsize)
	}
	return Inspection{VirtualSize: int64(vsize)}, nil
}

// VHD disk types (Virtual Hard Disk Image Format Specification).
const (
	vhdFixed        = 2
	vhdDynamic      = 3
	vhdDifferencing = 4
)

func inspectVHD(r io.ReaderAt, size int64, tail []byte) (Inspection, error) {
	footer := tail
	if !bytes.HasPrefix(footer, []byte("conectix")) {
		// A dynamic disk whose last sector was cut: its header copy.
		footer = readAtMost(r, 0, 512, size)
	}
	if len(footer) < 512 || !bytes.HasPrefix(footer, []byte("conectix")) {
		return Inspection{}, fmt.Errorf("%w: the VHD has no footer", ErrCorrupt)
	}
	be := binary.BigEndian
	switch t := be.Uint32(footer[60:]); t {
	case vhdFixed, vhdDynamic:
	case vhdDifferencing:
		return Inspection{}, notSelfContained("the VHD is a differencing disk")
	default:
		return Inspection{}, fmt.Errorf("%w: VHD disk type %d: allowed are fixed (2) and dynamic (3)", ErrCorrupt, t)
	}
	vsize := be.Uint64(footer[48:])
	if vsize > maxVirtualSize {
		return Inspection{}, fmt.Errorf("%w: VHD size %d is out of range", ErrCorrupt, vsize)
	}
	return Inspection{VirtualSize: int64(vsize)}, nil
}
