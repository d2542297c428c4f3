package vmfest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

// fakeISO writes a file that reads as an ISO 9660 image (its primary
// volume descriptor's identifier at 32 KiB + 1) and returns its path.
func fakeISO(t *testing.T, path string) string {
	t.Helper()
	b := make([]byte, 34*1024)
	b[32768] = 1
	copy(b[32769:], "CD001")
	if err := os.WriteFile(path, b, 0o444); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustErr(t *testing.T, err, want error, text string) {
	t.Helper()
	if err == nil || !errors.Is(err, want) || !strings.Contains(err.Error(), text) {
		t.Fatalf("err = %v, want %v saying %q", err, want, text)
	}
}

// TestVolumeLifecycle: a volume is created, attached at create, held by
// one machine at a time, outlives its machine, moves to another one, and
// is removed only once free.
func TestVolumeLifecycle(t *testing.T) {
	l, fk := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	img := blankImage(t, t.TempDir())

	v, err := l.CreateVolume(ctx, VolumeSpec{Name: "data", Size: 10 << 30})
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "data" || v.Size != 10<<30 || v.Format != "qcow2" || v.Machine != "" || v.Path != l.home.VolumeDisk("data") {
		t.Fatalf("created %+v", v)
	}
	if v.Allocated <= 0 || v.Allocated > 1<<20 {
		t.Fatalf("a new 10G volume takes %d bytes; want a small header only", v.Allocated)
	}
	_, err = l.CreateVolume(ctx, VolumeSpec{Name: "data", Size: 1 << 30})
	mustErr(t, err, ErrExists, `volume "data"`)

	m1, err := l.Instance(ctx, "m1", ImageSpec(img), natHardware(), WithAttachment(Attachment{Volume: "data"}))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ = l.Volume(ctx, "data"); v.Machine != "m1" || v.Slot == nil || *v.Slot != (spec.MountPoint{Controller: spec.DefaultIDEName, Slot: 1}) {
		t.Fatalf("after create: %+v", v)
	}
	if err := m1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	s, _ := fk.Started(l.home.MachinePath("m1"))
	want := []driver.Drive{{Controller: spec.DefaultIDEName, Slot: 1, Disk: driver.Disk{Path: l.home.VolumeDisk("data"), Format: "qcow2"}}}
	if len(s.Drives) != 1 || s.Drives[0] != want[0] {
		t.Fatalf("driver got drives %+v, want %+v", s.Drives, want)
	}

	// One machine at a time: a second machine is refused and left no
	// trace; the volume cannot go while it is held.
	_, err = l.Instance(ctx, "m2", ImageSpec(img), natHardware(), WithAttachment(Attachment{Volume: "data"}))
	mustErr(t, err, ErrWrongState, `in use by machine "m1"`)
	if _, err := os.Stat(l.home.MachinePath("m2")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused create left %s: %v", l.home.MachinePath("m2"), err)
	}
	mustErr(t, l.RemoveVolume(ctx, "data"), ErrWrongState, `attached to machine "m1"`)
	_, err = m1.Detach(ctx, Attachment{Volume: "data"})
	mustErr(t, err, ErrWrongState, "is running")

	// Destroying the machine keeps the volume and its data.
	if err := os.WriteFile(l.home.VolumeDisk("data")+".mark", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := testutil.MustSumFile(t, l.home.VolumeDisk("data"))
	if err := m1.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m1.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.MustSumFile(t, l.home.VolumeDisk("data")); got != sum {
		t.Fatal("destroy changed the volume")
	}
	if v, _ = l.Volume(ctx, "data"); v.Machine != "" {
		t.Fatalf("after destroy: %+v", v)
	}

	// Attached to a powered-off machine, in the slot asked for.
	m2, err := l.Instance(ctx, "m2", ImageSpec(img), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	at, err := m2.Attach(ctx, Attachment{Volume: "data", Slot: &spec.MountPoint{Controller: spec.DefaultIDEName, Slot: 3}})
	if err != nil || at != (spec.MountPoint{Controller: spec.DefaultIDEName, Slot: 3}) {
		t.Fatalf("Attach = %v, %v", at, err)
	}
	if _, err := m2.Attach(ctx, Attachment{Volume: "data"}); err == nil || !strings.Contains(err.Error(), `in use by machine "m2"`) {
		t.Fatalf("attaching a volume twice: %v", err)
	}
	info, err := m2.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := info.HardwareSpec.Storage[0].Devices[3]; d == nil || d.Volume != "data" {
		t.Fatalf("show lacks the volume: %+v", info.HardwareSpec.Storage[0].Devices)
	}
	if at, err := m2.Detach(ctx, Attachment{Volume: "data"}); err != nil || at.Slot != 3 {
		t.Fatalf("Detach = %v, %v", at, err)
	}
	_, err = m2.Detach(ctx, Attachment{Volume: "data"})
	mustErr(t, err, ErrNotFound, "volume data is not attached")
	if err := l.RemoveVolume(ctx, "data"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.home.VolumePath("data")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("volume directory after remove: %v", err)
	}
	vs, err := l.Volumes(ctx)
	if err != nil || len(vs) != 0 {
		t.Fatalf("Volumes = %+v, %v", vs, err)
	}
	// A machine whose volume is gone does not start, and says why.
	if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "gone", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Attach(ctx, Attachment{Volume: "gone"}); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(l.home.VolumePath("gone")) // behind vmfest's back
	mustErr(t, m2.Start(ctx), ErrNotFound, `volume "gone"`)
}

func TestVolumeSpecErrors(t *testing.T) {
	l, _ := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 10*time.Second)
	for _, tt := range []struct {
		name string
		s    VolumeSpec
		want string
	}{
		{"no size", VolumeSpec{Name: "v"}, "size 0: give a whole number of 512-byte sectors from 1M"},
		{"too small", VolumeSpec{Name: "v", Size: 4096}, "from 1M"},
		{"odd size", VolumeSpec{Name: "v", Size: 1<<20 + 1}, "512-byte sectors"},
		{"too large", VolumeSpec{Name: "v", Size: MaxVolumeSize + 512}, "to 64T"},
		{"bad name", VolumeSpec{Name: "../v", Size: 1 << 20}, `volume name "../v"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := l.CreateVolume(ctx, tt.s)
			mustErr(t, err, ErrInvalid, tt.want)
			entries, _ := os.ReadDir(l.home.VolumesPath())
			if len(entries) != 0 {
				t.Fatalf("a refused create left %v", entries)
			}
		})
	}
	_, err := l.Volume(ctx, "nope")
	mustErr(t, err, ErrNotFound, `volume "nope"`)
	mustErr(t, l.RemoveVolume(ctx, "nope"), ErrNotFound, `volume "nope"`)
}

// TestMediaInSlots: ISOs are shared read-only, a user's disk is one
// machine's and never deleted, slots are checked, and a full controller
// gets a virtio controller beside it.
func TestMediaInSlots(t *testing.T) {
	l, fk := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	dir := t.TempDir()
	img := blankImage(t, dir)
	iso := fakeISO(t, filepath.Join(dir, "tools.iso"))
	userDisk := testutil.BlankDisk(t, filepath.Join(dir, "user.raw"), 0o600)

	a, err := l.Instance(ctx, "a", ImageSpec(img), natHardware(), WithAttachment(Attachment{ISO: iso}), WithAttachment(Attachment{Disk: userDisk}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Instance(ctx, "b", ImageSpec(img), natHardware(), WithAttachment(Attachment{ISO: iso})); err != nil {
		t.Fatalf("a second machine with the same ISO: %v", err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	s, _ := fk.Started(l.home.MachinePath("a"))
	want := map[spec.MountPoint]driver.Disk{
		{Controller: spec.DefaultIDEName, Slot: 1}: {Path: userDisk, Format: "raw"},
		{Controller: spec.DefaultIDEName, Slot: 2}: {Path: iso, Format: "raw"},
	}
	if len(s.Drives) != len(want) {
		t.Fatalf("drives %+v, want %+v", s.Drives, want)
	}
	for _, d := range s.Drives {
		if want[spec.MountPoint{Controller: d.Controller, Slot: d.Slot}] != d.Disk {
			t.Fatalf("drives %+v, want %+v", s.Drives, want)
		}
	}
	if err := a.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name string
		a    Attachment
		err  error
		want string
	}{
		{"the disk again", Attachment{Disk: userDisk}, ErrWrongState, `in use by machine "a"`},
		{"the ISO as a disk", Attachment{Disk: iso}, ErrWrongState, `in use by machine "a"`},
		{"not an ISO", Attachment{ISO: testutil.BlankDisk(t, filepath.Join(dir, "x.iso"), 0o444)}, ErrInvalid, "not an ISO 9660 or UDF image"},
		{"relative path", Attachment{ISO: "tools.iso"}, ErrInvalid, "give an absolute path"},
		{"no such file", Attachment{Disk: filepath.Join(dir, "nope.raw")}, ErrInvalid, "no such file"},
		{"a machine's file", Attachment{Disk: filepath.Join(l.home.MachinePath("a"), "disk.qcow2")}, ErrInvalid, "a machine's file"},
		{"the image itself", Attachment{Disk: img.Location}, ErrInvalid, "the machine's own image"},
		{"no volume", Attachment{Volume: "nope"}, ErrNotFound, `volume "nope"`},
		{"two things", Attachment{Volume: "v", ISO: iso}, ErrInvalid, "give one of"},
		{"unknown controller", Attachment{ISO: iso, Slot: &spec.MountPoint{Controller: "SATA", Slot: 0}}, ErrInvalid, `"SATA" names no controller; controllers: "IDE Controller"`},
		{"slot out of range", Attachment{ISO: iso, Slot: &spec.MountPoint{Controller: spec.DefaultIDEName, Slot: 4}}, ErrInvalid, "has slots 0-3"},
		{"boot slot", Attachment{ISO: iso, Slot: &spec.MountPoint{Controller: spec.DefaultIDEName, Slot: 0}}, ErrInvalid, "boot mount point"},
		{"taken slot", Attachment{Disk: userDisk, Slot: &spec.MountPoint{Controller: spec.DefaultIDEName, Slot: 2}}, ErrInvalid, "already holds ISO " + iso},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := l.FindMachine(ctx, "b")
			if err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadFile(filepath.Join(l.home.MachinePath("b"), "machine.json"))
			_, err = b.Attach(ctx, tt.a)
			mustErr(t, err, tt.err, tt.want)
			after, _ := os.ReadFile(filepath.Join(l.home.MachinePath("b"), "machine.json"))
			if string(before) != string(after) {
				t.Fatal("a refused attach changed the machine's record")
			}
		})
	}

	// Destroy keeps the user's disk and ISO.
	if err := a.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{userDisk, iso} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("destroy removed the user's %s: %v", p, err)
		}
	}

	// Free slots fill in order; then a virtio controller of its own.
	for _, n := range []string{"v1", "v2", "v3"} {
		if _, err := l.CreateVolume(ctx, VolumeSpec{Name: n, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := l.Instance(ctx, "c", ImageSpec(img), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	var got []spec.MountPoint
	for _, n := range []string{"v1", "v2", "v3"} {
		at, err := c.Attach(ctx, Attachment{Volume: n})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, at)
	}
	wantSlots := []spec.MountPoint{{Controller: spec.DefaultIDEName, Slot: 1}, {Controller: spec.DefaultIDEName, Slot: 3}, {Controller: VolumesController, Slot: 0}}
	for i := range wantSlots {
		if got[i] != wantSlots[i] {
			t.Fatalf("slots %v, want %v", got, wantSlots)
		}
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if s, _ := fk.Started(l.home.MachinePath("c")); len(s.Drives) != 3 {
		t.Fatalf("drives %+v", s.Drives)
	}
	if err := c.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	// A new hardware keeps the volumes in their slots.
	bigger := natHardware()
	bigger.Spec.MemorySize = 1024
	if err := c.Set(ctx, Change{Hardware: &bigger}); err != nil {
		t.Fatalf("Set with volumes attached: %v", err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.HardwareSpec.MemorySize != 1024 || len(info.HardwareSpec.Storage) != 2 || info.HardwareSpec.Storage[1].Devices[0].Volume != "v3" {
		t.Fatalf("after Set: %+v", info.Hardware)
	}
}

// TestHotPlug: a running machine takes a disk on a virtio controller (one
// is added) and lets it go again; a disk on an IDE slot, or an ISO with no
// empty dvd drive but the seed's, needs it powered off.
func TestHotPlug(t *testing.T) {
	l, fk := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	dir := t.TempDir()
	m, err := l.Instance(ctx, "hot", ImageSpec(blankImage(t, dir)), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mdir := l.home.MachinePath("hot")
	_, err = m.Attach(ctx, Attachment{Volume: "v", Slot: &spec.MountPoint{Controller: spec.DefaultIDEName, Slot: 1}})
	mustErr(t, err, ErrInvalid, "a disk goes to a free slot of a virtio controller")
	at, err := m.Attach(ctx, Attachment{Volume: "v"})
	if err != nil || at != (spec.MountPoint{Controller: VolumesController, Slot: 0}) {
		t.Fatalf("hot Attach = %v, %v", at, err)
	}
	if s, _ := fk.Started(mdir); len(s.Drives) != 1 || s.Drives[0].Disk.Path != l.home.VolumeDisk("v") {
		t.Fatalf("the running machine's drives: %+v", s.Drives)
	}
	if v, _ := l.Volume(ctx, "v"); v.Machine != "hot" {
		t.Fatalf("the volume after a hot attach: %+v", v)
	}
	// A failed plug leaves the record as it was.
	before, _ := os.ReadFile(filepath.Join(mdir, "machine.json"))
	if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "w", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	fk.Fail("PlugDrive", errors.New("device_add refused"))
	if _, err := m.Attach(ctx, Attachment{Volume: "w"}); err == nil || !strings.Contains(err.Error(), "device_add refused") {
		t.Fatalf("a failing plug: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(mdir, "machine.json")); string(after) != string(before) {
		t.Fatal("a failed hot plug changed the record")
	}
	if v, _ := l.Volume(ctx, "w"); v.Machine != "" {
		t.Fatalf("a failed hot plug left the volume held: %+v", v)
	}
	// The seed's dvd drive is not an ISO's.
	iso := fakeISO(t, filepath.Join(dir, "a.iso"))
	cloud := blankImage(t, t.TempDir())
	cloud.CloudInit = true
	c, err := l.Instance(ctx, "cloud", ImageSpec(cloud), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = c.Attach(ctx, Attachment{ISO: iso})
	mustErr(t, err, ErrInvalid, "no empty dvd drive")
	// Detach while running: the virtio disk goes.
	if at, err := m.Detach(ctx, Attachment{Volume: "v"}); err != nil || at.Controller != VolumesController {
		t.Fatalf("hot Detach = %v, %v", at, err)
	}
	if s, _ := fk.Started(mdir); len(s.Drives) != 0 {
		t.Fatalf("the running machine's drives after detach: %+v", s.Drives)
	}
	if v, _ := l.Volume(ctx, "v"); v.Machine != "" {
		t.Fatalf("the volume after a hot detach: %+v", v)
	}
}
