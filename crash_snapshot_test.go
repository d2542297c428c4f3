package vmfest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/store"
)

// TestSnapshotCrashHelper is not a test: it is the helper process of
// TestSnapshotCrash (run with VMFEST_SNAPSHOT_CRASH set to a duration),
// which takes the memory snapshot "crash" of the running machine
// VMFEST_HELPER_MACHINE and kills itself after that long.
func TestSnapshotCrashHelper(t *testing.T) {
	after := os.Getenv("VMFEST_SNAPSHOT_CRASH")
	if after == "" {
		t.Skip("the helper process of TestSnapshotCrash")
	}
	d, err := time.ParseDuration(after)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	l, _ := helperServer()
	m := &localMachine{l: l, name: os.Getenv("VMFEST_HELPER_MACHINE")}
	time.AfterFunc(d, func() { syscall.Kill(os.Getpid(), syscall.SIGKILL) })
	_, err = m.TakeSnapshot(context.Background(), "crash")
	// Taken before the kill: wait for it, as the parent expects.
	fmt.Fprintln(os.Stderr, "the snapshot ended before the kill:", err)
	select {}
}

// TestSnapshotCrash kills, at moments spread over a memory snapshot of
// the running tiny guest, first the process taking it and then the
// machine's QEMU, and checks that the machine is whole either way: the
// snapshot is there, complete, or not there at all; a snapshot that is
// there restores to its moment (the guest's process alive, same pid), with
// the file that says where its devices were beside it; the overlay has no
// error (qemu-img check); and a machine whose QEMU was killed starts again.
func TestSnapshotCrash(t *testing.T) {
	image := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 10*time.Minute)
	m := bootTiny(ctx, t, l, "snc", image, saveHardware())
	dir := l.home.MachinePath("snc")
	pid := guestRun(ctx, t, m, "sleep 100000 >/dev/null 2>&1 & echo $!")
	pciFile := filepath.Join(dir, store.SnapshotPCIFile("crash"))

	// check finds the snapshot "crash" there whole or not at all, and
	// removes it (and any file of it) for the next round.
	check := func(t *testing.T) bool {
		t.Helper()
		snaps, err := m.Snapshots(ctx)
		if err != nil {
			t.Fatal(err)
		}
		there := slices.ContainsFunc(snaps, func(s Snapshot) bool { return s.Tag == "crash" })
		if there {
			if _, err := os.Stat(pciFile); err != nil {
				t.Fatalf("the snapshot is there without its PCI file: %v", err)
			}
			if err := m.RestoreSnapshot(ctx, "crash"); err != nil {
				t.Fatalf("restore the snapshot the crash left: %v", err)
			}
			expectState(t, m, Running)
			if err := m.DeleteSnapshot(ctx, "crash"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(pciFile); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the PCI file outlived its snapshot: %v", err)
			}
		}
		// A PCI file of a snapshot that was never taken is left; the next
		// snapshot of that name writes its own.
		if got := guestRun(ctx, t, m, "kill -0 "+pid+" && echo alive"); got != "alive" {
			t.Fatalf("process %s: %q", pid, got)
		}
		return there
	}
	// qemuImgCheck checks the powered-off machine's overlay: leaked
	// clusters (exit 3) are what an interrupted snapshot may leave, and
	// harmless; corruption (exit 2) is not.
	qemuImgCheck := func(t *testing.T) {
		t.Helper()
		out, err := exec.CommandContext(ctx, "qemu-img", "check", filepath.Join(dir, store.DiskFile)).CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 3) {
			t.Fatalf("qemu-img check: %v\n%s", err, out)
		}
	}

	delays := []time.Duration{0, 20 * time.Millisecond, 60 * time.Millisecond, 120 * time.Millisecond, 250 * time.Millisecond}
	taken := 0
	for _, d := range delays {
		t.Run("vmfest killed after "+d.String(), func(t *testing.T) {
			cmd := helperCmd(t, "", l.Home(), image.Location)
			cmd.Args = []string{os.Args[0], "-test.run=^TestSnapshotCrashHelper$"}
			cmd.Env = append(cmd.Env, "VMFEST_SNAPSHOT_CRASH="+d.String(), "VMFEST_HELPER_MACHINE=snc")
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("helper: %v", err)
			}
			// QEMU finishes or fails a job whose caller is gone, and runs
			// the guest on: wait for that.
			waitRunning(ctx, t, m)
			if check(t) {
				taken++
			}
		})
	}
	for _, d := range delays {
		t.Run("QEMU killed after "+d.String(), func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := m.TakeSnapshot(ctx, "crash")
				done <- err
			}()
			time.Sleep(d)
			if err := qemu.Kill(dir); err != nil {
				t.Fatal(err)
			}
			err := <-done
			t.Logf("the snapshot: %v", err)
			if err := qemu.WaitExit(ctx, dir); err != nil {
				t.Fatal(err)
			}
			expectState(t, m, Aborted)
			// The snapshot calls below wait for the dead QEMU's disk lock
			// to go (qemu.Settle); so does qemu-img check here.
			if err := qemu.Settle(ctx, dir); err != nil {
				t.Fatal(err)
			}
			qemuImgCheck(t)
			snaps, err := m.Snapshots(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if i := slices.IndexFunc(snaps, func(s Snapshot) bool { return s.Tag == "crash" }); i >= 0 {
				if snaps[i].MemorySize > 0 {
					taken++
					// Restored on the stopped machine: it runs from the
					// snapshot's moment.
					if _, err := os.Stat(pciFile); err != nil {
						t.Fatalf("the memory snapshot is there without its PCI file: %v", err)
					}
					if err := m.RestoreSnapshot(ctx, "crash"); err != nil {
						t.Fatalf("restore the snapshot the crash left: %v", err)
					}
					check(t)
					return
				}
				// Of the disk, taken after the kill (the machine read as
				// aborted by then).
				if err := m.DeleteSnapshot(ctx, "crash"); err != nil {
					t.Fatal(err)
				}
			}
			if err := m.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if err := m.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
			// A new boot: a new process for the next rounds.
			pid = guestRun(ctx, t, m, "sleep 100000 >/dev/null 2>&1 & echo $!")
		})
	}
	t.Logf("%d of %d kills left a snapshot", taken, 2*len(delays))
}

// waitRunning waits until the machine reads as running.
func waitRunning(ctx context.Context, t *testing.T, m Machine) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := m.State(ctx)
		if err == nil && st == Running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the machine is %s (%v) 60 s after the crash, want running", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
