package vmfest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/disk"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/spec"
)

// TestSet: a powered-off machine's memory, CPUs, hardware and disk size
// change; a running one, a shrink, bad values or another set of NICs are
// refused with the field named, and change nothing.
func TestSet(t *testing.T) {
	l, _ := newFakeServer(t, fake.Options{})
	ctx := context.Background()
	m, err := l.Instance(ctx, "s1", ImageSpec(blankImage(t, t.TempDir())), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	before, _ := m.Info(ctx)
	if err := m.Set(ctx, Change{MemorySize: 256, CPUCount: 1, DiskSize: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil || info.HardwareSpec.MemorySize != 256 || info.HardwareSpec.DiskSize != 16<<20 || info.Hardware != "custom" {
		t.Fatalf("after Set: %+v, %v", info.HardwareSpec, err)
	}
	if info.HardwareSpec.Network[0].MACAddress != before.HardwareSpec.Network[0].MACAddress {
		t.Fatal("Set changed the NIC's MAC")
	}
	if size, err := (disk.Native{}).VirtualSize(ctx, info.Disk, "qcow2"); err != nil || size != 16<<20 {
		t.Fatalf("disk of %d bytes, %v; want 16M", size, err)
	}
	small := spec.BuiltinHardware()["small"]
	small.Network = []spec.NIC{{AttachmentType: spec.AttachNAT}}
	hw := HardwareSpec(small)
	if err := m.Set(ctx, Change{Hardware: &hw}); err != nil {
		t.Fatal(err)
	}
	if info, _ := m.Info(ctx); info.HardwareSpec.MemorySize != 1024 || info.HardwareSpec.DiskSize != 16<<20 {
		t.Fatalf("after Set of the small spec: %+v", info.HardwareSpec)
	}
	hostOnly := HardwareModel("micro")
	for _, c := range []struct {
		name string
		c    Change
		says string
	}{
		{"shrink", Change{DiskSize: 8 << 20}, "disk-size: 8M is smaller than the machine's disk"},
		{"memory", Change{MemorySize: -5}, "memory-size: must be a positive number"},
		{"cpus", Change{CPUCount: 4096}, "cpu-count: 4096 is more than the host's"},
		{"other NICs", Change{Hardware: &hostOnly}, "network: the machine has 1 NICs and the new hardware 2"},
	} {
		err := m.Set(ctx, c.c)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", c.name, err, c.says)
		}
	}
	if info, _ := m.Info(ctx); info.HardwareSpec.MemorySize != 1024 || info.HardwareSpec.DiskSize != 16<<20 {
		t.Fatalf("a refused Set changed the machine: %+v", info.HardwareSpec)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var se *StateError
	if err := m.Set(ctx, Change{MemorySize: 512}); !errors.As(err, &se) || se.State != Running {
		t.Fatalf("Set of a running machine: %v", err)
	}
}

// TestDoctorKnowsResizeAndUserData: a disk grown without its record (a
// resize killed half-way) is found and recorded; a missing user-data is
// found.
func TestDoctorKnowsResizeAndUserData(t *testing.T) {
	l, _ := newFakeServer(t, fake.Options{})
	ctx := context.Background()
	img := blankImage(t, t.TempDir())
	img.CloudInit = true
	m, err := l.Instance(ctx, "d1", ImageSpec(img), natHardware(), WithUserData([]byte("#!/bin/sh\necho hi\n")))
	if err != nil {
		t.Fatal(err)
	}
	if found, err := l.Doctor(ctx, false); err != nil || len(found) != 0 {
		t.Fatalf("doctor of a whole machine: %+v, %v", found, err)
	}
	info, _ := m.Info(ctx)
	if err := disk.New("").Grow(ctx, info.Disk, 32<<20); err != nil {
		t.Fatal(err)
	}
	found, err := l.Doctor(ctx, true)
	if err != nil || len(found) != 1 || found[0].Kind != "disk-size" || !found[0].Fixed {
		t.Fatalf("doctor after a half-done resize: %+v, %v", found, err)
	}
	if info, _ := m.Info(ctx); info.HardwareSpec.DiskSize != 32<<20 {
		t.Fatalf("disk-size after the fix: %s", info.HardwareSpec.DiskSize)
	}
	os.Remove(filepath.Join(l.home.MachinePath("d1"), "user-data"))
	found, err = l.Doctor(ctx, true)
	if err != nil || len(found) != 1 || found[0].Kind != "missing-user-data" {
		t.Fatalf("doctor without the user-data: %+v, %v", found, err)
	}
}
