package vmfest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/spec"
)

// waitGuestDisk waits up to 60 s until the guest has a disk of size bytes
// (found by /sys/block: names move) or has none, as present says, and
// returns its name.
func waitGuestDisk(ctx context.Context, t *testing.T, m Machine, size int64, present bool) string {
	t.Helper()
	find := fmt.Sprintf(`for b in /sys/block/*; do [ "$(cat $b/size)" = %d ] && echo ${b##*/}; done; true`, size/512)
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := strings.TrimSpace(guestSh(ctx, t, m, find))
		if (got != "") == present {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's disks of %d bytes: %q after 60 s; want present=%v", size, got, present)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestHotPlugTinyGuest: a volume attached to the running tiny guest
// appears as a new virtio disk of its size, takes writes, and is gone from
// the guest once detached; what was written is in the volume when it is
// attached again.
func TestHotPlugTinyGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	img := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 3*time.Minute)
	const size = 48 << 20
	if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "hot", Size: size}); err != nil {
		t.Fatal(err)
	}
	m := bootTiny(ctx, t, l, "hp", img, natHardware())
	waitDisk := func(present bool) string {
		t.Helper()
		return waitGuestDisk(ctx, t, m, size, present)
	}
	begun := time.Now()
	at, err := m.Attach(ctx, Attachment{Volume: "hot"})
	if err != nil {
		t.Fatal(err)
	}
	dev := waitDisk(true)
	t.Logf("hot-plugged at %s as /dev/%s, seen by the guest %s after the call began", at, dev, time.Since(begun).Round(time.Millisecond))
	guestSh(ctx, t, m, "printf hot-data | dd of=/dev/"+dev+" bs=512 conv=sync,fsync 2>/dev/null")
	if _, err := m.Detach(ctx, Attachment{Volume: "hot"}); err != nil {
		t.Fatal(err)
	}
	waitDisk(false)
	if _, err := m.Attach(ctx, Attachment{Volume: "hot"}); err != nil {
		t.Fatal(err)
	}
	dev = waitDisk(true)
	if got := guestSh(ctx, t, m, "dd if=/dev/"+dev+" bs=8 count=1 2>/dev/null"); got != "hot-data" {
		t.Fatalf("the volume read back after a detach and attach: %q", got)
	}
	// It stays attached across a power cycle (now part of the hardware).
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	dev = waitDisk(true)
	if got := guestSh(ctx, t, m, "dd if=/dev/"+dev+" bs=8 count=1 2>/dev/null"); got != "hot-data" {
		t.Fatalf("the volume after a restart: %q", got)
	}
}

// TestSaveAfterHotPlug: a machine made with a volume is saved after the
// volume was unplugged while it ran, and again after it was plugged back
// in, and resumes each time (the same process alive, the volume gone or
// there): its devices keep the PCI addresses they had when it was saved,
// where a start from its record alone would put them elsewhere and QEMU
// could not load the state. So does a memory snapshot taken after the
// unplug, restored on the machine powered off; and a clone of it.
func TestSaveAfterHotPlug(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	img := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 4*time.Minute)
	const size = 40 << 20
	if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "hot", Size: size}); err != nil {
		t.Fatal(err)
	}
	// micro (its disks on a virtio controller, which takes disks while
	// it runs) with one nat NIC.
	hw := spec.BuiltinHardware()["micro"]
	hw.Network = []spec.NIC{{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterVirtio}}
	m, err := l.Instance(ctx, "hps", ImageSpec(img), HardwareSpec(hw), WithAttachment(Attachment{Volume: "hot"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(guestSh(ctx, t, m, "sleep 100000 >/dev/null 2>&1 & echo $!"))
	waitDisk := func(present bool) {
		t.Helper()
		waitGuestDisk(ctx, t, m, size, present)
	}
	alive := func(what string, m Machine) {
		t.Helper()
		if got := strings.TrimSpace(guestSh(ctx, t, m, "kill -0 "+pid+" && echo alive")); got != "alive" {
			t.Fatalf("%s: the guest's process %s: %q", what, pid, got)
		}
	}
	resume := func(what string) {
		t.Helper()
		if err := m.Save(ctx); err != nil {
			t.Fatalf("save %s: %v", what, err)
		}
		if err := m.Start(ctx); err != nil {
			t.Fatalf("start %s: %v", what, err)
		}
		alive(what, m)
	}
	waitDisk(true)
	if _, err := m.Detach(ctx, Attachment{Volume: "hot"}); err != nil {
		t.Fatal(err)
	}
	waitDisk(false)
	resume("after the volume was unplugged")
	waitDisk(false)

	// A memory snapshot taken now comes back on a powered-off machine (a
	// cold start from it) where it was taken; its PCI file goes with it.
	if _, err := m.TakeSnapshot(ctx, "after-unplug"); err != nil {
		t.Fatal(err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreSnapshot(ctx, "after-unplug"); err != nil {
		t.Fatalf("restore of the snapshot taken after the unplug, powered off: %v", err)
	}
	alive("after the snapshot's restore", m)
	pciFile := filepath.Join(l.home.MachinePath("hps"), "snapshot-after-unplug.pci")
	if _, err := os.Stat(pciFile); err != nil {
		t.Fatalf("the snapshot's PCI file: %v", err)
	}
	if err := m.DeleteSnapshot(ctx, "after-unplug"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pciFile); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the snapshot's PCI file outlived it: %v", err)
	}

	if _, err := m.Attach(ctx, Attachment{Volume: "hot"}); err != nil {
		t.Fatal(err)
	}
	waitDisk(true)
	resume("after the volume was plugged in again")
	waitDisk(true)
	if _, err := m.Detach(ctx, Attachment{Volume: "hot"}); err != nil {
		t.Fatal(err)
	}
	waitDisk(false)
	if _, err := m.TakeSnapshot(ctx, "before-clone"); err != nil {
		t.Fatal(err)
	}
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := m.Clone(ctx, "hps-clone")
	if err != nil {
		t.Fatalf("clone of it: %v", err)
	}
	if got := strings.TrimSpace(guestSh(ctx, t, c, "hostname")); got != "hps-clone" {
		t.Fatalf("the clone's host name: %q", got)
	}
	alive("the clone", c)
	// The snapshot came with the clone's copy of the disk, and so did
	// the file with its devices' places.
	snaps, err := c.Snapshots(ctx)
	if err != nil || !slices.ContainsFunc(snaps, func(s Snapshot) bool { return s.Tag == "before-clone" }) {
		t.Fatalf("the clone's snapshots: %+v, %v", snaps, err)
	}
	if _, err := os.Stat(filepath.Join(l.home.MachinePath("hps-clone"), "snapshot-before-clone.pci")); err != nil {
		t.Fatalf("the clone's snapshot's PCI file: %v", err)
	}
}
