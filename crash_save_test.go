package vmfest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestSaveCrashHelper is not a test: it is the helper process of
// TestSaveCrashPoints (run with VMFEST_SAVE_CRASH set), which saves the
// machine VMFEST_HELPER_MACHINE and kills itself at the save's point
// VMFEST_SAVE_CRASH. (A test function rather than a VMFEST_HELPER case, so
// crash_test.go's TestMain stays as it is.)
func TestSaveCrashHelper(t *testing.T) {
	point := os.Getenv("VMFEST_SAVE_CRASH")
	if point == "" {
		t.Skip("the helper process of TestSaveCrashPoints")
	}
	l, _ := helperServer()
	m := &localMachine{l: l, name: os.Getenv("VMFEST_HELPER_MACHINE")}
	err := m.save(context.Background(), func(p string) {
		if p == point {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	})
	fmt.Fprintln(os.Stderr, "the save ended without reaching", point, err)
	os.Exit(1)
}

// TestSaveCrashPoints kills a process saving the tiny guest at each point
// of Save, and one starting it from its saved state after each start-up
// step a resume adds, and checks that the machine is in its old state or
// its new one — never both, never neither: the state it reads as, and
// that the process started in the guest before runs on, same pid, once
// the machine is running again.
func TestSaveCrashPoints(t *testing.T) {
	image := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 8*time.Minute)
	m := bootTiny(ctx, t, l, "sc", image, saveHardware())
	dir := l.home.MachinePath("sc")
	pid := guestRun(ctx, t, m, "sleep 100000 >/dev/null 2>&1 & echo $!")

	runHelper := func(t *testing.T, cmd *exec.Cmd) {
		t.Helper()
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("helper ended without reaching its point: %v", err)
		}
	}
	// toRunning takes the machine from what the crash left to running,
	// as a user would, and checks the guest is the same one.
	toRunning := func(t *testing.T) {
		t.Helper()
		st, err := m.State(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch st {
		case Saved:
			err = m.Start(ctx)
		case Paused:
			err = m.Resume(ctx)
		}
		if err != nil {
			t.Fatalf("from %s: %v", st, err)
		}
		expectState(t, m, Running)
		if hasSavedState(dir) {
			t.Fatal("a running machine kept its saved state")
		}
		if got := guestRun(ctx, t, m, "kill -0 "+pid+" && echo alive"); got != "alive" {
			t.Fatalf("process %s: %q", pid, got)
		}
	}
	doctor := func(t *testing.T) {
		t.Helper()
		found, err := l.Doctor(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range found {
			if f.Machine == "sc" {
				t.Logf("doctor: %+v", f)
			}
		}
	}

	for _, c := range []struct {
		point string
		state State
	}{
		// Written, not committed: QEMU holds the guest (postmigrate), the
		// file is still .new: the old state, stopped.
		{"save:written", Paused},
		{"save:committed", Saved},
		{"save:ended", Saved},
	} {
		t.Run(c.point, func(t *testing.T) {
			cmd := helperCmd(t, "", l.Home(), image.Location)
			cmd.Args = []string{os.Args[0], "-test.run=^TestSaveCrashHelper$"}
			cmd.Env = append(cmd.Env, "VMFEST_SAVE_CRASH="+c.point, "VMFEST_HELPER_MACHINE=sc")
			runHelper(t, cmd)
			expectState(t, m, c.state)
			doctor(t)
			expectState(t, m, c.state)
			toRunning(t)
		})
	}

	for _, c := range []struct {
		step  string
		state State
	}{
		// Loaded, the guest held stopped, the file still there: the guest
		// never ran from it, so the file is stale and the machine paused.
		{"launch the machine", Paused},
		{"plug the NICs into their networks", Paused},
		{"discard the saved state", Paused},
		{"continue the resumed guest", Running},
	} {
		t.Run("start:"+c.step, func(t *testing.T) {
			if err := m.Save(ctx); err != nil {
				t.Fatal(err)
			}
			cmd := helperCmd(t, "start", l.Home(), image.Location)
			cmd.Env = append(cmd.Env, "VMFEST_HELPER_CRASH="+c.step, "VMFEST_HELPER_MACHINE=sc")
			runHelper(t, cmd)
			expectState(t, m, c.state)
			doctor(t)
			expectState(t, m, c.state)
			toRunning(t)
		})
	}
}
