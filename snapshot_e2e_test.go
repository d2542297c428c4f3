package vmfest

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

// guestSh runs a shell command in the guest through its agent and returns
// its stdout; a non-zero exit fails the test.
func guestSh(ctx context.Context, t *testing.T, m Machine, cmd string) string {
	t.Helper()
	res, err := m.Exec(ctx, ExecRequest{Command: []string{"sh", "-c", cmd}})
	if err != nil {
		t.Fatalf("exec %q: %v", cmd, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("exec %q: exit %d: %s", cmd, res.ExitCode, res.Stderr)
	}
	return string(res.Stdout)
}

// TestSnapshots: a memory snapshot of a running machine restores to the
// moment it was taken, running, whether the machine is running or powered
// off by then; a disk snapshot of a powered-off machine restores its disk;
// the base image never changes; and each refusal says why.
func TestSnapshots(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest")
	}
	img := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 4*time.Minute)
	base := testutil.MustSumFile(t, img.Location)
	m := bootTiny(ctx, t, l, "snap", img, natHardware())

	guestSh(ctx, t, m, "echo one > /root/one && sleep 600 >/dev/null 2>&1 & echo $! > /root/pid")
	pid := strings.TrimSpace(guestSh(ctx, t, m, "cat /root/pid"))
	begun := time.Now()
	s1, err := m.TakeSnapshot(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot of a running %d MiB machine: %s (%d bytes of memory state)", 512, time.Since(begun).Round(time.Millisecond), s1.MemorySize)
	if s1.Tag != "s1" || s1.MemorySize == 0 {
		t.Fatalf("snapshot = %+v, want a memory snapshot", s1)
	}
	expectState(t, m, Running)
	if _, err := m.TakeSnapshot(ctx, "s1"); !errors.Is(err, ErrExists) {
		t.Fatalf("a second s1: %v", err)
	}

	// Restored while running: what was written since is gone, the
	// process from before lives.
	guestSh(ctx, t, m, "echo two > /root/two")
	if err := m.RestoreSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, Running)
	got := guestSh(ctx, t, m, "ls /root; kill -0 $(cat /root/pid) && echo alive")
	if !strings.Contains(got, "one") || strings.Contains(got, "two") || !strings.Contains(got, "alive") {
		t.Fatalf("after restore while running: %q", got)
	}

	// Restored while powered off: it comes back running, same process.
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, Running)
	if got := guestSh(ctx, t, m, "cat /root/pid; kill -0 $(cat /root/pid) && echo alive"); !strings.Contains(got, pid) || !strings.Contains(got, "alive") {
		t.Fatalf("after restore from powered off: %q (pid was %s)", got, pid)
	}

	// A disk snapshot of the powered-off machine. The tiny guest's root
	// is in memory: the marker goes into the last sector of its one hard
	// disk.
	const lastSector = `d=$(for b in /sys/block/*; do case ${b##*/} in sd*|vd*|hd*) echo ${b##*/}; break;; esac; done); n=$(cat /sys/block/$d/size); `
	mark := func(word string) {
		guestSh(ctx, t, m, lastSector+`printf '%-512s' `+word+` | dd of=/dev/$d bs=512 seek=$((n-1)) count=1 conv=fsync 2>/dev/null`)
	}
	marked := func() string {
		return strings.TrimSpace(guestSh(ctx, t, m, lastSector+`dd if=/dev/$d bs=512 skip=$((n-1)) count=1 2>/dev/null`))
	}
	mark("three")
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	d1, err := m.TakeSnapshot(ctx, "d1")
	if err != nil || d1.MemorySize != 0 {
		t.Fatalf("disk snapshot = %+v, %v", d1, err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreSnapshot(ctx, "d1"); !errors.Is(err, ErrWrongState) || !strings.Contains(err.Error(), "power it down first") {
		t.Fatalf("a disk snapshot restored while running: %v", err)
	}
	if got := marked(); got != "three" {
		t.Fatalf("the disk's marker after a reboot: %q", got)
	}
	mark("four")
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreSnapshot(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, PoweredOff)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got := marked(); got != "three" {
		t.Fatalf("the disk's marker after restoring the disk snapshot: %q, want three", got)
	}

	snaps, err := m.Snapshots(ctx)
	if err != nil || len(snaps) != 2 || snaps[0].Tag != "s1" || snaps[1].Tag != "d1" {
		t.Fatalf("Snapshots = %+v, %v", snaps, err)
	}
	if err := m.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteSnapshot(ctx, "s1"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "it has: [d1]") {
		t.Fatalf("delete a deleted snapshot: %v", err)
	}
	if err := m.RestoreSnapshot(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("restore an unknown snapshot: %v", err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteSnapshot(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.MustSumFile(t, img.Location); got != base {
		t.Fatal("the base image changed")
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotRefusals: what cannot be snapshotted says why, before
// anything is written.
func TestSnapshotRefusals(t *testing.T) {
	l := newTestServer(t)
	ctx := ctxTimeout(t, 30*time.Second)
	dir := t.TempDir()
	mutable := testutil.BlankDisk(t, filepath.Join(dir, "mutable.raw"), 0o600)
	m, err := l.Instance(ctx, "mut", ImageSpec(spec.Image{Location: mutable}), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.TakeSnapshot(ctx, "s"); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "no overlay") {
		t.Fatalf("snapshot of a machine on a mutable image: %v", err)
	}
	if snaps, err := m.Snapshots(ctx); err != nil || len(snaps) != 0 {
		t.Fatalf("Snapshots of a machine without an overlay = %v, %v", snaps, err)
	}
	o, err := l.Instance(ctx, "ov", ImageSpec(blankImage(t, dir)), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "a/b", "..", strings.Repeat("x", 64)} {
		if _, err := o.TakeSnapshot(ctx, bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("snapshot name %q: %v", bad, err)
		}
	}
}
