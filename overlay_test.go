package vmfest

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vmfest/vmfest/disk"
)

// The overlay writers themselves are tested in package disk; this checks
// the root package's use of them: a Local makes a correct overlay for the
// bases a machine may have, natively or (for a base the native writer
// does not cover) with the Local's qemu-img, and reads its backing format
// back.
func TestLocalCreateOverlay(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	l, err := NewLocal(Config{Home: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tests := []struct {
		name   string
		format string
		native bool
	}{
		{"qcow2 base", "qcow2", true},
		{"raw base", "raw", true},
		{"vmdk base falls back to qemu-img", "vmdk", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			base := filepath.Join(dir, "base."+tt.format)
			run(t, "qemu-img", "create", "-q", "-f", tt.format, base, "16M")
			ov := filepath.Join(t.TempDir(), "disk.qcow2")
			native := disk.Native{}.CreateOverlay(ctx, base, tt.format, filepath.Join(t.TempDir(), "native.qcow2"), 0)
			if (native == nil) != tt.native {
				t.Fatalf("native writer: %v", native)
			}
			if err := l.createOverlay(ctx, base, tt.format, ov, 0); err != nil {
				t.Fatal(err)
			}
			run(t, "qemu-img", "check", "-q", ov)
			var info struct {
				VirtualSize     int64  `json:"virtual-size"`
				BackingFilename string `json:"backing-filename"`
				BackingFormat   string `json:"backing-filename-format"`
			}
			if err := json.Unmarshal(run(t, "qemu-img", "info", "--output=json", ov), &info); err != nil {
				t.Fatal(err)
			}
			if info.VirtualSize != 16<<20 || info.BackingFilename != base || info.BackingFormat != tt.format {
				t.Fatalf("qemu-img info = %+v", info)
			}
			f, err := overlayBackingFormat(ov)
			if tt.format == "vmdk" {
				// A machine's overlay may only name raw or qcow2.
				if err == nil {
					t.Fatalf("overlayBackingFormat = %q, want a refusal of vmdk", f)
				}
				return
			}
			if err != nil || f != tt.format {
				t.Fatalf("overlayBackingFormat = %q, %v", f, err)
			}
		})
	}
}

// writeOverlay and qemuImgOverlay are what bench_test.go's
// BenchmarkWriteOverlay and BenchmarkQemuImgOverlay (the before and after
// of docs/BENCHMARKS.md) measure: the native writer alone, and qemu-img.
func writeOverlay(path, backing, backingFormat string, size int64) error {
	return disk.Native{}.WriteOverlay(path, backing, backingFormat, size)
}

func (l *Local) qemuImgOverlay(ctx context.Context, base, baseFormat, path string) error {
	return disk.QEMUImg{Binary: l.cfg.QEMUImg}.CreateOverlay(ctx, base, baseFormat, path, 0)
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.CommandContext(context.Background(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}
