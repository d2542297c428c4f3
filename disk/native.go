package disk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/vmfest/vmfest/spec"
)

// Native is the in-process Manager: it reads qcow2 and raw headers and
// writes an overlay in one write and one fsync, starting no process. It
// returns ErrUnsupported (before touching the disk) for what it does not
// handle; Fallback lists those cases.
type Native struct{}

// The overlay Native writes: version 3, 64 KiB clusters, 16-bit
// refcounts, the shape `qemu-img create -f qcow2 -b` writes. Cluster 0
// holds the header, the backing format extension and the backing file
// name; cluster 1 the refcount table; cluster 2 the refcount block;
// cluster 3 on the L1 table, all zero (nothing allocated, every read
// falls through to the backing file).
const (
	overlayClusterBits = 16
	overlayClusterSize = 1 << overlayClusterBits
	overlayRefcountOrd = 4 // 16-bit refcounts
)

// CreateOverlay implements Manager.
func (n Native) CreateOverlay(ctx context.Context, base, baseFormat, path string, size int64) error {
	baseSize, err := n.VirtualSize(ctx, base, baseFormat)
	if err != nil {
		return err
	}
	switch {
	case size == 0:
		size = baseSize
	case size < baseSize:
		return fmt.Errorf("%w: %d bytes asked, base %s has %d", ErrTooSmall, size, base, baseSize)
	}
	return n.WriteOverlay(path, base, baseFormat, size)
}

// VirtualSize implements Manager for raw and qcow2 disks.
func (Native) VirtualSize(ctx context.Context, path, format string) (int64, error) {
	if format != spec.DiskFormatRaw && format != spec.DiskFormatQCOW2 {
		return 0, fmt.Errorf("%w: the virtual size of a %q disk", ErrUnsupported, format)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read base image: %w", err)
	}
	defer f.Close()
	if format == spec.DiskFormatRaw {
		st, err := f.Stat()
		if err != nil {
			return 0, fmt.Errorf("read base image: %w", err)
		}
		return st.Size(), nil
	}
	var b [QCOW2HeaderV3Length]byte
	n, err := io.ReadFull(f, b[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return 0, fmt.Errorf("read base image header: %w", err)
	}
	h, err := ParseQCOW2Header(b[:n])
	if err != nil {
		return 0, fmt.Errorf("base image %s: %w", path, err)
	}
	return int64(h.Size), nil
}

// OverlayBackingFormat implements Manager: it reads the backing format
// extension of a version 3 qcow2 header (every overlay vmfest writes, by
// either implementation, has one).
func (Native) OverlayBackingFormat(ctx context.Context, path string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read overlay: %w", err)
	}
	defer f.Close()
	var cluster [overlayClusterSize]byte
	n, err := io.ReadFull(f, cluster[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "", fmt.Errorf("read overlay %s: %w", path, err)
	}
	b := cluster[:n]
	h, err := ParseQCOW2Header(b)
	if err != nil || h.Version < 3 {
		return "", fmt.Errorf("overlay %s: not a version 3 qcow2 header", path)
	}
	be := binary.BigEndian
	for off := int(h.HeaderLength); off >= QCOW2HeaderV3Length && off+8 <= len(b); {
		typ := be.Uint32(b[off:])
		size := int(be.Uint32(b[off+4:]))
		off += 8
		if typ == QCOW2ExtEnd || size > len(b)-off {
			break
		}
		if typ == QCOW2ExtBackingFormat {
			return checkBackingFormat(path, string(b[off:off+size]))
		}
		off += pad8(size)
	}
	return "", fmt.Errorf("overlay %s: no backing format in its header", path)
}

// CreateBlank implements Manager: an overlay with no backing file.
func (n Native) CreateBlank(ctx context.Context, path string, size int64) error {
	if size <= 0 {
		return fmt.Errorf("create disk %s: size %d: must be more than 0 bytes", path, size)
	}
	return n.WriteOverlay(path, "", "", size)
}

// WriteOverlay writes at path, which must not exist, an empty qcow2
// overlay of size bytes backed by backing read as backingFormat, in one
// write, and syncs it. It is CreateOverlay for a caller that knows the
// size (or wants an overlay larger than its base). The file is created
// 0600: what the guest writes is its own. With backing "" the file has no
// backing file: a blank disk that reads as zeros.
func (Native) WriteOverlay(path, backing, backingFormat string, size int64) error {
	switch {
	case len(backing) > QCOW2MaxBackingLen:
		return fmt.Errorf("%w: a backing file name of %d bytes (at most %d)", ErrUnsupported, len(backing), QCOW2MaxBackingLen)
	case size <= 0:
		return fmt.Errorf("%w: an overlay of %d bytes", ErrUnsupported, size)
	}
	const perL1 = int64(overlayClusterSize) * (overlayClusterSize / 8) // bytes one L1 entry maps
	l1Size := (size + perL1 - 1) / perL1
	l1Clusters := (l1Size*8 + overlayClusterSize - 1) / overlayClusterSize
	if 3+l1Clusters > overlayClusterSize/2 { // one refcount block must cover the metadata
		return fmt.Errorf("%w: an overlay of %d bytes needs more than one refcount block", ErrUnsupported, size)
	}
	backingOffset := QCOW2HeaderV3Length + 8 + pad8(len(backingFormat)) + 8
	if backing == "" {
		backingOffset = 0
	}
	if backingOffset+len(backing) > overlayClusterSize {
		return fmt.Errorf("%w: a header of %d bytes (backing format %d bytes)", ErrUnsupported, backingOffset+len(backing), len(backingFormat))
	}
	const l1Offset = 3 * overlayClusterSize

	file := make([]byte, l1Offset+l1Size*8)
	b := QCOW2Header{
		Version:               3,
		BackingFileOffset:     uint64(backingOffset),
		BackingFileSize:       uint32(len(backing)),
		ClusterBits:           overlayClusterBits,
		Size:                  uint64(size),
		L1Size:                uint32(l1Size),
		L1TableOffset:         l1Offset,
		RefcountTableOffset:   overlayClusterSize, // cluster 1
		RefcountTableClusters: 1,
		RefcountOrder:         overlayRefcountOrd,
		HeaderLength:          QCOW2HeaderV3Length,
	}.AppendV3(file[:0])
	if backing != "" {
		b = appendQCOW2Ext(b, QCOW2ExtBackingFormat, backingFormat)
	}
	b = appendQCOW2Ext(b, QCOW2ExtEnd, "")
	b = append(b, backing...) // all within cluster 0, so within file
	// Refcount table: one block, at cluster 2.
	binary.BigEndian.PutUint64(file[overlayClusterSize:], 2*overlayClusterSize)
	// Refcount block: header, table, block and L1 clusters are in use.
	for c := range 3 + l1Clusters {
		binary.BigEndian.PutUint16(file[2*overlayClusterSize+2*c:], 1)
	}

	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
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

// Grow implements Manager: growing a qcow2 may need its L1 table moved,
// which Native leaves to qemu-img.
func (Native) Grow(ctx context.Context, path string, size int64) error {
	return fmt.Errorf("%w: growing a qcow2 disk", ErrUnsupported)
}
