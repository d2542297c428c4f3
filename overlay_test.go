package vmfest

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNativeOverlayMatchesQEMU checks the natively written overlay with
// qemu-img itself: it must pass `qemu-img check`, name its backing file and
// format, have the base's size, and read back the base's data.
func TestNativeOverlayMatchesQEMU(t *testing.T) {
	dir := t.TempDir()
	sizes := []struct {
		name   string
		format string
		size   string
	}{
		{"raw 1M", "raw", "1M"},
		{"qcow2 64M", "qcow2", "64M"},
		{"qcow2 3G", "qcow2", "3G"},
		{"qcow2 2T", "qcow2", "2T"},
	}
	for _, tt := range sizes {
		t.Run(tt.name, func(t *testing.T) {
			base := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+"."+tt.format)
			run(t, "qemu-img", "create", "-q", "-f", tt.format, base, tt.size)
			// Put recognisable data at the start of the base.
			run(t, "qemu-io", "-f", tt.format, "-c", "write -P 0x5a 0 64k", base)
			size, err := virtualSize(base, tt.format)
			if err != nil {
				t.Fatal(err)
			}
			ov := base + ".overlay"
			if err := writeOverlay(ov, base, tt.format, size); err != nil {
				t.Fatal(err)
			}
			run(t, "qemu-img", "check", "-q", ov)
			var info struct {
				VirtualSize     int64  `json:"virtual-size"`
				BackingFilename string `json:"backing-filename"`
				BackingFormat   string `json:"backing-filename-format"`
				Format          string `json:"format"`
			}
			if err := json.Unmarshal(run(t, "qemu-img", "info", "--output=json", ov), &info); err != nil {
				t.Fatal(err)
			}
			if info.Format != "qcow2" || info.VirtualSize != size || info.BackingFilename != base || info.BackingFormat != tt.format {
				t.Fatalf("info = %+v", info)
			}
			out := run(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 64k", ov)
			if strings.Contains(string(out), "fail") {
				t.Fatalf("overlay does not read the base's data: %s", out)
			}
			// Writes land in the overlay, not the base.
			run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4k", ov)
			run(t, "qemu-img", "check", "-q", ov)
			out = run(t, "qemu-io", "-f", tt.format, "-r", "-c", "read -P 0x5a 0 64k", base)
			if strings.Contains(string(out), "fail") {
				t.Fatalf("base changed: %s", out)
			}
			st, _ := os.Stat(ov)
			if st.Size() > 1<<20 {
				t.Fatalf("overlay is %d bytes", st.Size())
			}
		})
	}
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.CommandContext(context.Background(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}
