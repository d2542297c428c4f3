package disk_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/disk"
)

// needQEMUImg skips a test that checks against the real qemu-img when it
// is not installed.
func needQEMUImg(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}

// qemuInfo is what the tests read of `qemu-img info`.
type qemuInfo struct {
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
	Format          string `json:"format"`
}

func info(t *testing.T, path string) qemuInfo {
	t.Helper()
	var in qemuInfo
	if err := json.Unmarshal(run(t, "qemu-img", "info", "--output=json", "-U", path), &in); err != nil {
		t.Fatal(err)
	}
	return in
}

// base makes a base image of format and size with 0x5a in its first 64 KiB.
func base(t *testing.T, dir, name, format, size string) string {
	t.Helper()
	p := filepath.Join(dir, name+"."+format)
	run(t, "qemu-img", "create", "-q", "-f", format, p, size)
	run(t, "qemu-io", "-f", format, "-c", "write -P 0x5a 0 64k", p)
	return p
}

// TestCreateOverlay checks the overlay of each Manager with qemu-img
// itself: it must pass `qemu-img check`, name its backing file and format,
// have the base's size, read back the base's data, take writes without
// changing the base, and stay small.
func TestCreateOverlay(t *testing.T) {
	needQEMUImg(t)
	dir := t.TempDir()
	managers := []struct {
		name string
		m    disk.Manager
	}{
		{"native", disk.Native{}},
		{"qemu-img", disk.QEMUImg{}},
		{"fallback", disk.New("qemu-img")},
	}
	bases := []struct {
		name   string
		format string
		size   string
	}{
		{"raw-1M", "raw", "1M"},
		{"qcow2-64M", "qcow2", "64M"},
		{"qcow2-3G", "qcow2", "3G"},
		{"qcow2-2T", "qcow2", "2T"},
	}
	for _, bt := range bases {
		b := base(t, dir, bt.name, bt.format, bt.size)
		for _, mt := range managers {
			t.Run(bt.name+"/"+mt.name, func(t *testing.T) {
				ctx := t.Context()
				size, err := mt.m.VirtualSize(ctx, b, bt.format)
				if err != nil {
					t.Fatal(err)
				}
				if want := info(t, b).VirtualSize; size != want {
					t.Fatalf("VirtualSize = %d, qemu-img says %d", size, want)
				}
				ov := filepath.Join(t.TempDir(), "disk.qcow2")
				if err := mt.m.CreateOverlay(ctx, b, bt.format, ov, 0); err != nil {
					t.Fatal(err)
				}
				run(t, "qemu-img", "check", "-q", ov)
				if got := info(t, ov); got != (qemuInfo{VirtualSize: size, BackingFilename: b, BackingFormat: bt.format, Format: "qcow2"}) {
					t.Fatalf("qemu-img info = %+v", got)
				}
				if f, err := mt.m.OverlayBackingFormat(ctx, ov); err != nil || f != bt.format {
					t.Fatalf("OverlayBackingFormat = %q, %v; want %q", f, err, bt.format)
				}
				if out := run(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 64k", ov); strings.Contains(string(out), "fail") {
					t.Fatalf("overlay does not read the base's data: %s", out)
				}
				run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4k", ov)
				run(t, "qemu-img", "check", "-q", ov)
				if out := run(t, "qemu-io", "-f", bt.format, "-r", "-c", "read -P 0x5a 0 64k", b); strings.Contains(string(out), "fail") {
					t.Fatalf("base changed: %s", out)
				}
				if st, err := os.Stat(ov); err != nil || st.Size() > 1<<20 {
					t.Fatalf("overlay: %v, %v", st.Size(), err)
				}
				if err := mt.m.CreateOverlay(ctx, b, bt.format, ov, 0); err == nil {
					t.Fatal("CreateOverlay over an existing overlay succeeded")
				}
			})
		}
	}
}

// TestNativeUnsupported lists what Native leaves to qemu-img, and checks
// that New's Fallback then makes a correct overlay with qemu-img.
func TestNativeUnsupported(t *testing.T) {
	needQEMUImg(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.raw")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	longDir := filepath.Join(dir, strings.Repeat("d", 250), strings.Repeat("e", 250), strings.Repeat("f", 250), strings.Repeat("g", 250))
	if err := os.MkdirAll(longDir, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		base        string
		format      string
		fallbackErr bool // qemu-img refuses as well
	}{
		{"vmdk base", base(t, dir, "b", "vmdk", "8M"), "vmdk", false},
		{"vdi base", base(t, dir, "b", "vdi", "8M"), "vdi", false},
		{"empty raw base", empty, "raw", false},
		{"backing name over 1023 bytes", base(t, longDir, "b", "qcow2", "8M"), "qcow2", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			ov := filepath.Join(t.TempDir(), "disk.qcow2")
			if err := (disk.Native{}).CreateOverlay(ctx, tt.base, tt.format, ov, 0); !errors.Is(err, disk.ErrUnsupported) {
				t.Fatalf("Native.CreateOverlay: %v, want ErrUnsupported", err)
			}
			if _, err := os.Stat(ov); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("Native left %s behind: %v", ov, err)
			}
			err := disk.New("").CreateOverlay(ctx, tt.base, tt.format, ov, 0)
			if tt.fallbackErr {
				if err == nil || errors.Is(err, disk.ErrUnsupported) || !strings.Contains(err.Error(), "qemu-img") {
					t.Fatalf("fallback: %v, want qemu-img's error", err)
				}
				if _, err := os.Stat(ov); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("a failed qemu-img left %s behind: %v", ov, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			run(t, "qemu-img", "check", "-q", ov)
			want, _ := disk.QEMUImg{}.VirtualSize(ctx, tt.base, tt.format)
			if got := info(t, ov); got != (qemuInfo{VirtualSize: want, BackingFilename: tt.base, BackingFormat: tt.format, Format: "qcow2"}) {
				t.Fatalf("qemu-img info = %+v", got)
			}
		})
	}
}

// recorder is a Manager that answers err and counts its calls.
type recorder struct {
	err   error
	calls *int
}

func (r recorder) Grow(context.Context, string, int64) error {
	*r.calls++
	return r.err
}

func (r recorder) CreateOverlay(context.Context, string, string, string, int64) error {
	*r.calls++
	return r.err
}

func (r recorder) CreateBlank(context.Context, string, int64) error {
	*r.calls++
	return r.err
}

func (r recorder) VirtualSize(context.Context, string, string) (int64, error) {
	*r.calls++
	return 7, r.err
}

func (r recorder) OverlayBackingFormat(context.Context, string) (string, error) {
	*r.calls++
	return "raw", r.err
}

// TestFallback: the secondary is asked only when the primary answers
// ErrUnsupported, for every method.
func TestFallback(t *testing.T) {
	broken := errors.New("disk full")
	tests := []struct {
		name          string
		primary       error
		wantSecondary int
		wantErr       error
	}{
		{"primary handles it", nil, 0, nil},
		{"primary unsupported", disk.ErrUnsupported, 1, nil},
		{"primary unsupported, wrapped", errors.Join(errors.New("a vmdk base"), disk.ErrUnsupported), 1, nil},
		{"primary fails", broken, 0, broken},
	}
	methods := map[string]func(disk.Manager) error{
		"CreateOverlay": func(m disk.Manager) error { return m.CreateOverlay(t.Context(), "b", "raw", "o", 0) },
		"Grow":          func(m disk.Manager) error { return m.Grow(t.Context(), "o", 1) },
		"CreateBlank":   func(m disk.Manager) error { return m.CreateBlank(t.Context(), "o", 1) },
		"VirtualSize": func(m disk.Manager) error {
			_, err := m.VirtualSize(t.Context(), "b", "raw")
			return err
		},
		"OverlayBackingFormat": func(m disk.Manager) error {
			_, err := m.OverlayBackingFormat(t.Context(), "o")
			return err
		},
	}
	for _, tt := range tests {
		for name, call := range methods {
			t.Run(tt.name+"/"+name, func(t *testing.T) {
				var p, s int
				f := disk.Fallback{Primary: recorder{tt.primary, &p}, Secondary: recorder{nil, &s}}
				if err := call(f); !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if p != 1 || s != tt.wantSecondary {
					t.Fatalf("primary called %d times, secondary %d; want 1, %d", p, s, tt.wantSecondary)
				}
			})
		}
	}
}

// TestOverlayBackingFormatRefuses: headers that are not an overlay vmfest
// wrote are errors, never ErrUnsupported (there is no fallback for them).
func TestOverlayBackingFormatRefuses(t *testing.T) {
	needQEMUImg(t)
	dir := t.TempDir()
	noFormat := filepath.Join(dir, "noformat.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", noFormat, "1M")
	v2 := filepath.Join(dir, "v2.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "1M")
	text := filepath.Join(dir, "text")
	os.WriteFile(text, []byte("not a disk\n"), 0o644)
	vmdkBacked := filepath.Join(dir, "vmdk-backed.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "vmdk", "-b", base(t, dir, "b", "vmdk", "1M"), vmdkBacked)
	tests := []struct {
		name, path, want string
	}{
		{"no backing format", noFormat, "no backing format"},
		{"version 2", v2, "not a version 3 qcow2 header"},
		{"not qcow2", text, "not a version 3 qcow2 header"},
		{"missing", filepath.Join(dir, "missing"), "no such file"},
		{"backing format not allowed", vmdkBacked, `backing format "vmdk": allowed: raw, qcow2`},
	}
	for _, tt := range tests {
		for _, m := range []disk.Manager{disk.Native{}, disk.New("")} {
			t.Run(tt.name, func(t *testing.T) {
				f, err := m.OverlayBackingFormat(t.Context(), tt.path)
				if err == nil || errors.Is(err, disk.ErrUnsupported) || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("OverlayBackingFormat = %q, %v; want an error with %q", f, err, tt.want)
				}
			})
		}
	}
	// qemu-img reads the same refusal.
	if _, err := (disk.QEMUImg{}).OverlayBackingFormat(t.Context(), vmdkBacked); err == nil || !strings.Contains(err.Error(), "allowed: raw, qcow2") {
		t.Fatalf("QEMUImg.OverlayBackingFormat: %v", err)
	}
}

// TestCreateOverlaySize: an overlay may be larger than its base, never
// smaller, with either implementation.
func TestCreateOverlaySize(t *testing.T) {
	ctx := t.Context()
	base := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]disk.Manager{"native": disk.Native{}, "qemu-img": disk.QEMUImg{}} {
		t.Run(name, func(t *testing.T) {
			ov := filepath.Join(t.TempDir(), "ov.qcow2")
			if err := m.CreateOverlay(ctx, base, "raw", ov, 64<<20); err != nil {
				t.Fatal(err)
			}
			if size, err := (disk.QEMUImg{}).VirtualSize(ctx, ov, "qcow2"); err != nil || size != 64<<20 {
				t.Fatalf("virtual size %d, %v; want 64 MiB", size, err)
			}
			small := filepath.Join(t.TempDir(), "small.qcow2")
			if err := m.CreateOverlay(ctx, base, "raw", small, 512<<10); !errors.Is(err, disk.ErrTooSmall) {
				t.Fatalf("smaller than the base: %v", err)
			}
			if _, err := os.Stat(small); !os.IsNotExist(err) {
				t.Fatalf("a refused overlay was left: %v", err)
			}
		})
	}
}

// TestGrow: a qcow2 grows through the fallback, never shrinks, and keeps
// what was written in it.
func TestGrow(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	ov := filepath.Join(dir, "ov.qcow2")
	m := disk.New("")
	if err := m.CreateOverlay(ctx, base, "raw", ov, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.Grow(ctx, ov, 8<<20); err != nil {
		t.Fatal(err)
	}
	if size, err := m.VirtualSize(ctx, ov, "qcow2"); err != nil || size != 8<<20 {
		t.Fatalf("after Grow: %d, %v", size, err)
	}
	if err := m.Grow(ctx, ov, 8<<20); err != nil {
		t.Fatalf("Grow to its own size: %v", err)
	}
	if err := m.Grow(ctx, ov, 2<<20); !errors.Is(err, disk.ErrTooSmall) {
		t.Fatalf("shrink: %v", err)
	}
	if backing, err := m.OverlayBackingFormat(ctx, ov); err != nil || backing != "raw" {
		t.Fatalf("the overlay's backing after Grow: %q, %v", backing, err)
	}
}

// TestCreateBlank checks the blank disk of each Manager with qemu-img: it
// passes `qemu-img check`, has no backing file, has the size asked, reads
// as zeros and takes writes; and no Manager overwrites a file or makes a
// disk of no size.
func TestCreateBlank(t *testing.T) {
	needQEMUImg(t)
	for _, tt := range []struct {
		name string
		m    disk.Manager
	}{{"native", disk.Native{}}, {"qemu-img", disk.QEMUImg{}}, {"default", disk.New("")}} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			dir := t.TempDir()
			for _, size := range []int64{1 << 20, 10 << 30, 1<<40 + 512} {
				p := filepath.Join(dir, fmt.Sprintf("blank-%d.qcow2", size))
				if err := tt.m.CreateBlank(ctx, p, size); err != nil {
					t.Fatal(err)
				}
				run(t, "qemu-img", "check", "-q", p)
				in := info(t, p)
				if in.Format != "qcow2" || in.VirtualSize != size || in.BackingFilename != "" {
					t.Fatalf("size %d: qemu-img info = %+v", size, in)
				}
				if got, err := tt.m.VirtualSize(ctx, p, "qcow2"); err != nil || got != size {
					t.Fatalf("VirtualSize = %d, %v; want %d", got, err, size)
				}
				run(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0 0 64k", p)
				run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", p)
				run(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 64k", p)
				if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
					t.Fatalf("mode: %v, %v; want 0600", st, err)
				}
				if err := tt.m.CreateBlank(ctx, p, size); err == nil {
					t.Fatal("CreateBlank overwrote an existing file")
				}
			}
			if err := tt.m.CreateBlank(ctx, filepath.Join(dir, "zero.qcow2"), 0); err == nil {
				t.Fatal("CreateBlank made a disk of 0 bytes")
			}
		})
	}
}
