package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The qcow2 layout, as QEMU's docs/interop/qcow2.txt specifies it: the one
// place in vmfest that knows the magic, the header's fields and the
// header extension types. The image package's inspector and sniffer and
// this package's overlay writer and readers all go through it.

// QCOW2Magic is the first four bytes of every qcow2 file.
const QCOW2Magic = "QFI\xfb"

// Lengths of the header's fixed part: version 2 ends after the snapshot
// fields; version 3 adds the feature bitmaps, the refcount order and the
// header length, and may be longer (QCOW2Header.HeaderLength).
const (
	QCOW2HeaderV2Length = 72
	QCOW2HeaderV3Length = 104
)

// qcow2 incompatible feature bits.
const (
	QCOW2IncompatDirty        = 1 << 0
	QCOW2IncompatCorrupt      = 1 << 1
	QCOW2IncompatExternalData = 1 << 2
	QCOW2IncompatCompression  = 1 << 3
	QCOW2IncompatExtendedL2   = 1 << 4
	// QCOW2IncompatKnown is every bit this list names.
	QCOW2IncompatKnown = QCOW2IncompatDirty | QCOW2IncompatCorrupt | QCOW2IncompatExternalData |
		QCOW2IncompatCompression | QCOW2IncompatExtendedL2
)

// qcow2 header extension types. Each extension is a big-endian type and
// length, then its data padded to 8 bytes; they follow the header in its
// first cluster, up to an end marker.
const (
	QCOW2ExtEnd           = 0x00000000
	QCOW2ExtBackingFormat = 0xe2792aca
	QCOW2ExtFeatureNames  = 0x6803f857
	QCOW2ExtBitmaps       = 0x23852875
	QCOW2ExtCrypto        = 0x0537be77
	QCOW2ExtDataFile      = 0x44415441
)

// QCOW2MaxBackingLen is the longest backing file name qemu accepts.
const QCOW2MaxBackingLen = 1023

// ErrNotQCOW2: the bytes do not start with a qcow2 header.
var ErrNotQCOW2 = errors.New("not a qcow2 header")

// QCOW2Header is the fixed part of a qcow2 header (all fields big-endian
// on disk). For a version 2 header the version 3 fields read as qemu
// takes them: no features, 16-bit refcounts, a 72-byte header.
type QCOW2Header struct {
	Version               uint32
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64 // virtual size in bytes
	CryptMethod           uint32
	L1Size                uint32
	L1TableOffset         uint64
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       uint64
	IncompatibleFeatures  uint64
	CompatibleFeatures    uint64
	AutoclearFeatures     uint64
	RefcountOrder         uint32
	HeaderLength          uint32
}

// ParseQCOW2Header reads the fixed header at the start of b. It checks
// only the magic and that b holds the fixed part of the header's version
// (versions above 3 are read as 3); what a caller relies on (the version,
// the cluster size, the header length) the caller checks.
func ParseQCOW2Header(b []byte) (QCOW2Header, error) {
	if len(b) < QCOW2HeaderV2Length || string(b[:4]) != QCOW2Magic {
		return QCOW2Header{}, ErrNotQCOW2
	}
	be := binary.BigEndian
	h := QCOW2Header{
		Version:               be.Uint32(b[4:]),
		BackingFileOffset:     be.Uint64(b[8:]),
		BackingFileSize:       be.Uint32(b[16:]),
		ClusterBits:           be.Uint32(b[20:]),
		Size:                  be.Uint64(b[24:]),
		CryptMethod:           be.Uint32(b[32:]),
		L1Size:                be.Uint32(b[36:]),
		L1TableOffset:         be.Uint64(b[40:]),
		RefcountTableOffset:   be.Uint64(b[48:]),
		RefcountTableClusters: be.Uint32(b[56:]),
		NbSnapshots:           be.Uint32(b[60:]),
		SnapshotsOffset:       be.Uint64(b[64:]),
		RefcountOrder:         4,
		HeaderLength:          QCOW2HeaderV2Length,
	}
	if h.Version < 3 {
		return h, nil
	}
	if len(b) < QCOW2HeaderV3Length {
		return QCOW2Header{}, fmt.Errorf("%w: a version %d header is %d bytes, only %d given", ErrNotQCOW2, h.Version, QCOW2HeaderV3Length, len(b))
	}
	h.IncompatibleFeatures = be.Uint64(b[72:])
	h.CompatibleFeatures = be.Uint64(b[80:])
	h.AutoclearFeatures = be.Uint64(b[88:])
	h.RefcountOrder = be.Uint32(b[96:])
	h.HeaderLength = be.Uint32(b[100:])
	return h, nil
}

// AppendV3 appends h as a version 3 fixed header (QCOW2HeaderV3Length
// bytes, magic first) to b. Version and HeaderLength are written as they
// are set.
func (h QCOW2Header) AppendV3(b []byte) []byte {
	be := binary.BigEndian
	b = append(b, QCOW2Magic...)
	b = be.AppendUint32(b, h.Version)
	b = be.AppendUint64(b, h.BackingFileOffset)
	b = be.AppendUint32(b, h.BackingFileSize)
	b = be.AppendUint32(b, h.ClusterBits)
	b = be.AppendUint64(b, h.Size)
	b = be.AppendUint32(b, h.CryptMethod)
	b = be.AppendUint32(b, h.L1Size)
	b = be.AppendUint64(b, h.L1TableOffset)
	b = be.AppendUint64(b, h.RefcountTableOffset)
	b = be.AppendUint32(b, h.RefcountTableClusters)
	b = be.AppendUint32(b, h.NbSnapshots)
	b = be.AppendUint64(b, h.SnapshotsOffset)
	b = be.AppendUint64(b, h.IncompatibleFeatures)
	b = be.AppendUint64(b, h.CompatibleFeatures)
	b = be.AppendUint64(b, h.AutoclearFeatures)
	b = be.AppendUint32(b, h.RefcountOrder)
	b = be.AppendUint32(b, h.HeaderLength)
	return b
}

// appendQCOW2Ext appends one header extension, its data padded to 8 bytes.
func appendQCOW2Ext(b []byte, typ uint32, data string) []byte {
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	for range pad8(len(data)) - len(data) {
		b = append(b, 0)
	}
	return b
}

// pad8 rounds n up to a multiple of 8, as extension data is padded.
func pad8(n int) int { return (n + 7) &^ 7 }
