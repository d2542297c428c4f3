package vmfest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfest/vmfest/disk"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/spec"
)

func TestInstanceErrors(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	img := blankImage(t, l.Home())
	if _, err := l.Instance(ctx, "taken", ImageSpec(img), HardwareModel("micro")); err != nil {
		t.Fatal(err)
	}
	bad := func(mod func(*spec.Hardware)) Hardware {
		h := spec.BuiltinHardware()["micro"]
		mod(&h)
		return HardwareSpec(h)
	}
	tests := []struct {
		name     string
		machine  string
		image    Image
		hardware Hardware
		is       error
		want     string
	}{
		{"bad name", "../etc", ImageSpec(img), HardwareModel("micro"), ErrInvalid, "machine name"},
		{"name with NUL", "a\x00", ImageSpec(img), HardwareModel("micro"), ErrInvalid, "machine name"},
		{"taken", "taken", ImageSpec(img), HardwareModel("micro"), ErrExists, `machine "taken"`},
		{"unknown hardware", "vm", ImageSpec(img), HardwareModel("huge"), ErrNotFound, "known: micro, small"},
		{"unknown image model", "vm", ImageModel("debian-12"), HardwareModel("micro"), ErrNotFound, `image model "debian-12"`},
		{"missing disk", "vm", ImageSpec(spec.Image{Location: "/nonexistent.qcow2"}), HardwareModel("micro"), ErrInvalid, "no such file"},
		{"no location", "vm", ImageSpec(spec.Image{}), HardwareModel("micro"), ErrInvalid, "location"},
		{"memory zero", "vm", ImageSpec(img), bad(func(h *spec.Hardware) { h.MemorySize = -5 }), ErrInvalid, "memory-size"},
		{"too many cpus", "vm", ImageSpec(img), bad(func(h *spec.Hardware) { h.CPUCount = 4096 }), ErrInvalid, "cpu-count: 4096 is more than the host's"},
		{"boot names no controller", "vm", ImageSpec(img), bad(func(h *spec.Hardware) { h.BootMountPoint = &spec.MountPoint{Controller: "SATA"} }), ErrInvalid, `boot-mount-point: "SATA" names no controller`},
		{"nothing chosen", "vm", Image{}, HardwareModel("micro"), ErrInvalid, "give a model or a spec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := l.Instance(ctx, tt.machine, tt.image, tt.hardware)
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tt.is, tt.want)
			}
		})
	}
	// Nothing half-created is left behind.
	entries, _ := os.ReadDir(l.home.MachinesPath())
	if len(entries) != 1 || entries[0].Name() != "taken" {
		t.Fatalf("machines dir holds %v", entries)
	}
}

func TestInstanceIsAnOverlay(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	img := blankImage(t, l.Home())
	before, _ := os.ReadFile(img.Location)
	m, err := l.Instance(ctx, "ov", ImageSpec(img), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != PoweredOff || info.BaseImage != img.Location || info.Disk != filepath.Join(l.home.MachinePath("ov"), "disk.qcow2") {
		t.Fatalf("info = %+v", info)
	}
	st, err := os.Stat(info.Disk)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > 1<<20 {
		t.Fatalf("overlay is %d bytes", st.Size())
	}
	if info.HardwareSpec.Network[0].MACAddress == "" {
		t.Fatal("no MAC assigned")
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(img.Location)
	if err != nil || !bytes.Equal(before, after) {
		t.Fatal("the immutable image changed or vanished")
	}
	if _, err := l.FindMachine(ctx, "ov"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v", err)
	}
	if err := m.Destroy(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second destroy: %v", err)
	}
}

func TestMutableImageGoesWithItsMachine(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	disk := filepath.Join(l.Home(), "own.raw")
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	m, err := l.Instance(ctx, "own", ImageSpec(spec.Image{Location: disk}), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Instance(ctx, "own2", ImageSpec(spec.Image{Location: disk}), HardwareModel("micro")); !errors.Is(err, ErrExists) {
		t.Fatalf("a second machine on the same mutable disk: %v", err)
	}
	info, _ := m.Info(ctx)
	if info.Disk != disk || info.BaseImage != "" {
		t.Fatalf("info = %+v", info)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); !os.IsNotExist(err) {
		t.Fatalf("mutable disk survived destroy: %v", err)
	}
}

// TestDestroyKeepDisk: KeepDisk keeps a mutable image's disk file, and the
// file can be a new machine's disk at once.
func TestDestroyKeepDisk(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	disk := filepath.Join(l.Home(), "keep.raw")
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	m, err := l.Instance(ctx, "keep", ImageSpec(spec.Image{Location: disk}), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx, KeepDisk()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("KeepDisk lost the disk: %v", err)
	}
	if _, err := l.FindMachine(ctx, "keep"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the machine survived destroy: %v", err)
	}
	if _, err := l.Instance(ctx, "again", ImageSpec(spec.Image{Location: disk}), natHardware()); err != nil {
		t.Fatalf("the kept disk as a new machine's: %v", err)
	}
}

func TestConcurrentCreatesOneWins(t *testing.T) {
	l := newTestServer(t)
	img := blankImage(t, l.Home())
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, taken := 0, 0
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := l.Instance(context.Background(), "same", ImageSpec(img), HardwareModel("micro"))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, ErrExists):
				taken++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || taken != 15 {
		t.Fatalf("wins=%d taken=%d", wins, taken)
	}
	entries, _ := os.ReadDir(l.home.MachinesPath())
	if len(entries) != 1 {
		t.Fatalf("machines dir holds %v", entries)
	}
}

func TestWrongStateChangesNothing(t *testing.T) {
	l := newTestServer(t)
	ctx := ctxTimeout(t, time.Minute)
	m, err := l.Instance(ctx, "ws", ImageSpec(blankImage(t, l.Home())), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	calls := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"pause", m.Pause}, {"resume", m.Resume}, {"stop", m.Stop}, {"power-down", m.PowerDown}, {"wait for", m.WaitReady},
	}
	for _, c := range calls {
		err := c.fn(ctx)
		var se *StateError
		if !errors.As(err, &se) || !errors.Is(err, ErrWrongState) || se.State != PoweredOff {
			t.Fatalf("%s on a powered-off machine: %v", c.name, err)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("cannot %s machine \"ws\": it is powered-off", c.name)) {
			t.Errorf("message: %v", err)
		}
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		fn   func(context.Context) error
	}{{"start", m.Start}, {"resume", m.Resume}, {"destroy", func(ctx context.Context) error { return m.Destroy(ctx) }}} {
		if err := c.fn(ctx); !errors.Is(err, ErrWrongState) {
			t.Fatalf("%s on a running machine: %v", c.name, err)
		}
	}
	if st, _ := m.State(ctx); st != Running {
		t.Fatalf("state = %s", st)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.State(ctx); st != PoweredOff {
		t.Fatalf("state = %s", st)
	}
}

func TestStopTimesOutWhenGuestIgnoresButton(t *testing.T) {
	// The blank machine has no OS, so nothing answers the ACPI button.
	l := newTestServer(t)
	ctx := ctxTimeout(t, time.Minute)
	m, err := l.Instance(ctx, "deaf", ImageSpec(blankImage(t, l.Home())), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
	defer cancel()
	err = m.Stop(sctx)
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "still running") {
		t.Fatalf("err = %v", err)
	}
	if st, _ := m.State(ctx); st != Running {
		t.Fatalf("state after a timed-out stop = %s", st)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestHardwareModels(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	os.WriteFile(filepath.Join(l.home.HardwareModelsPath(), "tiny.yaml"), []byte("memory-size: 128\n"), 0o644)
	os.WriteFile(filepath.Join(l.home.HardwareModelsPath(), "broken.yaml"), []byte("memroy-size: 128\n"), 0o644)
	names, err := l.HardwareModels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "micro,small,medium,large,xlarge,broken,tiny" {
		t.Fatalf("names = %v", names)
	}
	h, err := l.HardwareModel(ctx, "tiny")
	if err != nil || h.MemorySize != 128 || h.CPUCount != 1 || len(h.Network) != 1 {
		t.Fatalf("tiny = %+v, %v", h, err)
	}
	if _, err := l.HardwareModel(ctx, "broken"); err == nil || !strings.Contains(err.Error(), `unknown key "memroy-size"`) {
		t.Fatalf("err = %v", err)
	}
	// An image's hardware overrides merge over the chosen model.
	img := blankImage(t, l.Home())
	img.Hardware = &spec.Hardware{MemorySize: 256}
	m, err := l.Instance(ctx, "ovr", ImageSpec(img), HardwareModel("small"))
	if err != nil {
		t.Fatal(err)
	}
	info, _ := m.Info(ctx)
	if info.HardwareSpec.MemorySize != 256 || info.Hardware != "small" {
		t.Fatalf("info = %+v", info)
	}
}

// TestDiskSize: disk-size makes the overlay that large; smaller than the
// image, or on a mutable image, is refused naming the field, and nothing
// is left behind.
func TestDiskSize(t *testing.T) {
	l, _ := newFakeServer(t, fake.Options{})
	ctx := context.Background()
	img := blankImage(t, t.TempDir()) // 1 MiB raw
	hw := natHardware()
	hw.Spec.DiskSize = 64 << 20
	m, err := l.Instance(ctx, "big", ImageSpec(img), hw)
	if err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	size, err := disk.Native{}.VirtualSize(ctx, info.Disk, "qcow2")
	if err != nil || size != 64<<20 || info.HardwareSpec.DiskSize != 64<<20 {
		t.Fatalf("overlay of %d bytes (%v), spec disk-size %s; want 64M", size, err, info.HardwareSpec.DiskSize)
	}
	mutable := filepath.Join(t.TempDir(), "own.raw")
	os.WriteFile(mutable, make([]byte, 1<<20), 0o644)
	for _, c := range []struct {
		name string
		img  spec.Image
		size spec.Size
		says string
	}{
		{"smaller", img, 512 << 10, "disk-size: 512K is smaller than the image"},
		{"mutable", spec.Image{Location: mutable}, 8 << 20, "disk-size: 8M cannot be given: the image is not immutable"},
	} {
		hw := natHardware()
		hw.Spec.DiskSize = c.size
		_, err := l.Instance(ctx, c.name, ImageSpec(c.img), hw)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", c.name, err, c.says)
		}
		if _, err := l.FindMachine(ctx, c.name); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: a refused create left a machine: %v", c.name, err)
		}
	}
	if hidden := hiddenEntries(l.home.MachinesPath()); len(hidden) > 0 {
		t.Errorf("left behind: %v", hidden)
	}
}
