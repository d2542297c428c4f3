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

// TestCloneCrashHelper is not a test: it is the helper process of
// TestCloneCrashPoints (run with VMFEST_CLONE_CRASH set), which clones
// the machine VMFEST_HELPER_MACHINE as "cc" and kills itself at the
// clone's point VMFEST_CLONE_CRASH.
func TestCloneCrashHelper(t *testing.T) {
	point := os.Getenv("VMFEST_CLONE_CRASH")
	if point == "" {
		t.Skip("the helper process of TestCloneCrashPoints")
	}
	l, _ := helperServer()
	m := &localMachine{l: l, name: os.Getenv("VMFEST_HELPER_MACHINE")}
	_, err := m.clone(context.Background(), "cc", func(p string) {
		if p == point {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	})
	fmt.Fprintln(os.Stderr, "the clone ended without reaching", point, err)
	os.Exit(1)
}

// TestCloneCrashPoints kills a process cloning the running tiny guest at
// each point of Clone and checks that the source is whole (running, or
// paused when the kill came while it was held, and its process runs on
// once it is running again), that the clone is absent or whole (saved and
// still to be re-identified, which its start then does), and that the
// sweep leaves nothing hidden.
func TestCloneCrashPoints(t *testing.T) {
	image := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 8*time.Minute)
	m := bootTiny(ctx, t, l, "cs", image, saveHardware())
	pid := guestRun(ctx, t, m, "sleep 100000 >/dev/null 2>&1 & echo $!")
	for _, c := range []struct {
		point  string
		source State // what the kill leaves of the source
		clone  State // and of the clone; "" absent
	}{
		{"clone:mkdir", Running, ""},
		{"clone:allocated", Running, ""},
		{"clone:held", Paused, ""},
		{"clone:disk", Running, ""},
		{"clone:record", Running, ""},
		{"clone:renamed", Running, Saved},
		{"clone:started", Running, Running},
	} {
		t.Run(c.point, func(t *testing.T) {
			cmd := helperCmd(t, "", l.Home(), image.Location)
			cmd.Args = []string{os.Args[0], "-test.run=^TestCloneCrashHelper$"}
			cmd.Env = append(cmd.Env, "VMFEST_CLONE_CRASH="+c.point, "VMFEST_HELPER_MACHINE=cs")
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("helper ended without reaching its point: %v", err)
			}
			expectState(t, m, c.source)
			if _, err := l.Doctor(ctx, true); err != nil {
				t.Fatal(err)
			}
			if h := hiddenEntries(l.home.MachinesPath()); len(h) != 0 {
				t.Fatalf("left after the sweep: %v", h)
			}
			if c.source == Paused {
				if err := m.Resume(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if got := guestRun(ctx, t, m, "kill -0 "+pid+" && echo alive"); got != "alive" {
				t.Fatalf("the source's process %s: %q", pid, got)
			}
			cl, err := l.FindMachine(ctx, "cc")
			if c.clone == "" {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("a clone killed at %s exists: %v", c.point, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			expectState(t, cl, c.clone)
			if c.clone == Saved {
				if info, _ := cl.Info(ctx); info.ReidentifyPending != "cs" {
					t.Fatalf("the clone does not say it is to be re-identified: %+v", info)
				}
				if err := cl.Start(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if info, _ := cl.Info(ctx); info.ReidentifyPending != "" {
				t.Fatalf("the running clone is still to be re-identified")
			}
			if got := guestRun(ctx, t, cl, "hostname; kill -0 "+pid+" && echo alive"); got != "cc\nalive" {
				t.Fatalf("the clone: %q", got)
			}
			if err := cl.PowerDown(ctx); err != nil {
				t.Fatal(err)
			}
			if err := cl.Destroy(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}
