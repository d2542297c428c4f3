package disk

import (
	"errors"
	"testing"
)

func TestQCOW2HeaderRoundTrip(t *testing.T) {
	h := QCOW2Header{
		Version: 3, BackingFileOffset: 0x1_0000_0001, BackingFileSize: 2, ClusterBits: 16,
		Size: 3 << 40, CryptMethod: 4, L1Size: 5, L1TableOffset: 6, RefcountTableOffset: 7,
		RefcountTableClusters: 8, NbSnapshots: 9, SnapshotsOffset: 10, IncompatibleFeatures: 11,
		CompatibleFeatures: 12, AutoclearFeatures: 13, RefcountOrder: 14, HeaderLength: 104,
	}
	b := h.AppendV3(nil)
	if len(b) != QCOW2HeaderV3Length {
		t.Fatalf("AppendV3 wrote %d bytes, want %d", len(b), QCOW2HeaderV3Length)
	}
	got, err := ParseQCOW2Header(b)
	if err != nil || got != h {
		t.Fatalf("ParseQCOW2Header = %+v, %v; want %+v", got, err, h)
	}
}

func TestParseQCOW2Header(t *testing.T) {
	v3 := QCOW2Header{Version: 3, HeaderLength: 112}.AppendV3(nil)
	v2 := QCOW2Header{Version: 2, Size: 512}.AppendV3(nil)
	tests := []struct {
		name    string
		b       []byte
		want    QCOW2Header
		wantErr bool
	}{
		{"version 3", v3, QCOW2Header{Version: 3, HeaderLength: 112}, false},
		{"version 2 ignores the v3 fields", v2, QCOW2Header{Version: 2, Size: 512, RefcountOrder: 4, HeaderLength: 72}, false},
		{"version 2, 72 bytes", v2[:72], QCOW2Header{Version: 2, Size: 512, RefcountOrder: 4, HeaderLength: 72}, false},
		{"version 3 cut short", v3[:100], QCOW2Header{}, true},
		{"shorter than version 2", v2[:71], QCOW2Header{}, true},
		{"wrong magic", append([]byte("QFI\xfa"), v3[4:]...), QCOW2Header{}, true},
		{"empty", nil, QCOW2Header{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseQCOW2Header(tt.b)
			if tt.wantErr {
				if !errors.Is(err, ErrNotQCOW2) {
					t.Fatalf("err = %v, want ErrNotQCOW2", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseQCOW2Header = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func FuzzParseQCOW2Header(f *testing.F) {
	f.Add(QCOW2Header{Version: 3}.AppendV3(nil))
	f.Add([]byte(QCOW2Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseQCOW2Header(b)
		if err == nil && h.Version >= 3 {
			if again, err := ParseQCOW2Header(h.AppendV3(nil)); err != nil || again != h {
				t.Fatalf("round trip: %+v, %v; want %+v", again, err, h)
			}
		}
	})
}
