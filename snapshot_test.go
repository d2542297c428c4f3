package vmfest

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver/fake"
)

// TestFakeSnapshots: the orchestration's rules for snapshots, against the
// fake driver: which states take, restore and delete them, what comes back
// running, and each refusal.
func TestFakeSnapshots(t *testing.T) {
	l, fk := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	dir := t.TempDir()
	m, err := l.Instance(ctx, "s", ImageSpec(blankImage(t, dir)), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	mdir := l.home.MachinePath("s")
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	boot := fk.Boot(mdir)
	mem, err := m.TakeSnapshot(ctx, "mem")
	if err != nil || mem.MemorySize == 0 {
		t.Fatalf("TakeSnapshot running = %+v, %v", mem, err)
	}
	if _, err := m.TakeSnapshot(ctx, "mem"); !errors.Is(err, ErrExists) {
		t.Fatalf("the same name again: %v", err)
	}
	// From powered off, a memory snapshot comes back running, as the
	// guest was.
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if fk.Boot(mdir) == boot {
		t.Fatal("a cold start kept the guest's memory")
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreSnapshot(ctx, "mem"); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, Running)
	if s, _ := fk.Started(mdir); s.Snapshot != "mem" || fk.Boot(mdir) != boot {
		t.Fatalf("restore from powered off: started with snapshot %q, boot %d (want mem, %d)", s.Snapshot, fk.Boot(mdir), boot)
	}
	// Paused machines take and restore memory snapshots too.
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.TakeSnapshot(ctx, "paused"); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreSnapshot(ctx, "mem"); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, Running)

	// A disk snapshot: only to a powered-off machine.
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	disk, err := m.TakeSnapshot(ctx, "disk")
	if err != nil || disk.MemorySize != 0 {
		t.Fatalf("TakeSnapshot powered off = %+v, %v", disk, err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreSnapshot(ctx, "disk"); !errors.Is(err, ErrWrongState) {
		t.Fatalf("disk snapshot while running: %v", err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreSnapshot(ctx, "disk"); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, PoweredOff)

	snaps, err := m.Snapshots(ctx)
	if err != nil || len(snaps) != 3 {
		t.Fatalf("Snapshots = %+v, %v", snaps, err)
	}
	for _, n := range []string{"mem", "paused", "disk"} {
		if err := m.DeleteSnapshot(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.DeleteSnapshot(ctx, "mem"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "it has: none") {
		t.Fatalf("delete again: %v", err)
	}

	// A memory snapshot with a volume attached is refused: the volume is
	// not in it.
	if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Attach(ctx, Attachment{Volume: "v"}); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.TakeSnapshot(ctx, "with-volume"); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "volume v") {
		t.Fatalf("memory snapshot with a volume: %v", err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.TakeSnapshot(ctx, "disk-with-volume"); err != nil {
		t.Fatalf("disk snapshot with a volume: %v", err)
	}
}
