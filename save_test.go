package vmfest

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/spec"
)

// Saved state against the fake driver (-short): the orchestration, the
// states a crash can leave and every refusal. Against real QEMU:
// save_e2e_test.go and crash_save_test.go.

func newSavedFake(t *testing.T, name string) (*Local, *fake.Driver, Machine, string) {
	t.Helper()
	l, fk := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	m, err := l.Instance(ctx, name, ImageSpec(blankImage(t, t.TempDir())), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return l, fk, m, l.home.MachinePath(name)
}

func TestFakeSaveAndResume(t *testing.T) {
	for _, paused := range []bool{false, true} {
		name := map[bool]string{false: "running", true: "paused"}[paused]
		t.Run(name, func(t *testing.T) {
			_, fk, m, dir := newSavedFake(t, "s1")
			ctx := ctxTimeout(t, 30*time.Second)
			want := Running
			if paused {
				want = Paused
				if err := m.Pause(ctx); err != nil {
					t.Fatal(err)
				}
			}
			boot := fk.Boot(dir)
			if err := m.Save(ctx); err != nil {
				t.Fatal(err)
			}
			expectState(t, m, Saved)
			if !hasSavedState(dir) || len(fk.Running()) != 0 {
				t.Fatalf("after save: file %v, running %v", hasSavedState(dir), fk.Running())
			}
			if _, err := os.Stat(savingPath(dir)); err == nil {
				t.Fatal("the save left its .new file")
			}
			info, err := m.Info(ctx)
			if err != nil || info.State != Saved || info.PID != 0 {
				t.Fatalf("info: %+v %v", info, err)
			}
			if err := m.Start(ctx); err != nil {
				t.Fatal(err)
			}
			expectState(t, m, want)
			if fk.Boot(dir) != boot {
				t.Fatalf("the resumed guest is from boot %d, want %d (it booted again)", fk.Boot(dir), boot)
			}
			if hasSavedState(dir) {
				t.Fatal("the saved state was not discarded after the resume")
			}
			clock := map[bool]int{false: 1, true: 0}[paused]
			if got := fk.ClockSets(dir); got != clock {
				t.Fatalf("guest-set-time called %d times, want %d", got, clock)
			}
			s, _ := fk.Started(dir)
			if s.Incoming == "" {
				t.Fatal("the driver was not given the saved state")
			}
			// The next start after a power-down boots.
			if err := m.PowerDown(ctx); err != nil {
				t.Fatal(err)
			}
			if err := m.Start(ctx); err != nil {
				t.Fatal(err)
			}
			if s, _ := fk.Started(dir); s.Incoming != "" || fk.Boot(dir) != boot+1 {
				t.Fatalf("a start after power-down resumed (%q, boot %d)", s.Incoming, fk.Boot(dir))
			}
		})
	}
}

// TestFakeSavedRefusals: what a saved machine refuses (its hardware and
// media must not change while its memory is on disk), what a machine in
// another state refuses, and a driver that cannot save.
func TestFakeSavedRefusals(t *testing.T) {
	_, _, m, dir := newSavedFake(t, "s2")
	ctx := ctxTimeout(t, 30*time.Second)
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		op string
		fn func() error
	}{
		{"save", func() error { return m.Save(ctx) }},
		{"pause", func() error { return m.Pause(ctx) }},
		{"resume", func() error { return m.Resume(ctx) }},
		{"stop", func() error { return m.Stop(ctx) }},
		{"wait-ready", func() error { return m.WaitReady(ctx) }},
		{"set", func() error { return m.Set(ctx, Change{MemorySize: 1024}) }},
		{"resize", func() error { return m.Set(ctx, Change{DiskSize: spec.Size(8 << 30)}) }},
		{"attach", func() error { _, err := m.Attach(ctx, Attachment{ISO: "/nonexistent.iso"}); return err }},
		{"detach", func() error { _, err := m.Detach(ctx, Attachment{ISO: "/nonexistent.iso"}); return err }},
		{"exec", func() error { _, err := m.Exec(ctx, ExecRequest{Command: []string{"true"}}); return err }},
	} {
		t.Run(tt.op, func(t *testing.T) {
			err := tt.fn()
			var se *StateError
			if !errors.As(err, &se) || !errors.Is(err, ErrWrongState) || se.State != Saved {
				t.Fatalf("%s of a saved machine: %v, want a StateError in state saved", tt.op, err)
			}
			expectState(t, m, Saved)
			if !hasSavedState(dir) {
				t.Fatal("the saved state is gone")
			}
		})
	}

	// A powered-off machine has nothing to save.
	l, _ := newFakeServer(t, fake.Options{})
	off, err := l.Instance(ctx, "off", ImageSpec(blankImage(t, t.TempDir())), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	if err := off.Save(ctx); !errors.Is(err, ErrWrongState) {
		t.Fatalf("save of a powered-off machine: %v", err)
	}

	// A driver without memory snapshots says so, and the machine runs on.
	f := fake.New(fake.Options{}).Info().Features
	f.MemorySnapshots = false
	l2, _ := newFakeServer(t, fake.Options{Features: &f})
	m2, err := l2.Instance(ctx, "nosave", ImageSpec(blankImage(t, t.TempDir())), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.Save(ctx); !errors.Is(err, driver.ErrUnsupported) || !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("save on a driver without memory snapshots: %v", err)
	}
	expectState(t, m2, Running)
}

// TestFakeSaveFails: a save the driver fails leaves the machine as it
// was, with no state file.
func TestFakeSaveFails(t *testing.T) {
	_, fk, m, dir := newSavedFake(t, "s3")
	ctx := ctxTimeout(t, 30*time.Second)
	fk.Fail("Save", errors.New("disk full"))
	if err := m.Save(ctx); err == nil {
		t.Fatal("the save did not fail")
	}
	expectState(t, m, Running)
	if hasSavedState(dir) {
		t.Fatal("a failed save left a state file")
	}
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, Saved)
}

// TestFakeSavedDiscard: power-down and destroy of a saved machine discard
// its state.
func TestFakeSavedDiscard(t *testing.T) {
	l, _, m, dir := newSavedFake(t, "s4")
	ctx := ctxTimeout(t, 30*time.Second)
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, PoweredOff)
	if hasSavedState(dir) {
		t.Fatal("power-down kept the saved state")
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.FindMachine(ctx, "s4"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after destroy: %v", err)
	}
}

// TestFakeSaveCrashStates builds, with the fake, each state a crash during
// a save or a resume leaves, and checks how it reads and that the machine
// goes on from it.
func TestFakeSaveCrashStates(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	saver := func(fk *fake.Driver, _, _ string) driver.Saver { return fk }

	t.Run("written, not committed", func(t *testing.T) {
		// The hypervisor holds the written state, the file is still .new:
		// the old state (the guest whole, stopped), continued by Resume.
		_, fk, m, dir := newSavedFake(t, "c1")
		if err := saver(fk, dir, "c1").Save(ctx, driver.Machine{Name: "c1", Dir: dir}, savingPath(dir)); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, Paused)
		if err := m.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, Running)
		if err := m.Save(ctx); err != nil { // the leftover .new is replaced
			t.Fatal(err)
		}
		expectState(t, m, Saved)
	})
	t.Run("committed, hypervisor alive", func(t *testing.T) {
		_, fk, m, dir := newSavedFake(t, "c2")
		boot := fk.Boot(dir)
		if err := saver(fk, dir, "c2").Save(ctx, driver.Machine{Name: "c2", Dir: dir}, savingPath(dir)); err != nil {
			t.Fatal(err)
		}
		if err := commitSave(dir); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, Saved)
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, Running)
		if fk.Boot(dir) != boot || hasSavedState(dir) {
			t.Fatalf("boot %d (want %d), file %v", fk.Boot(dir), boot, hasSavedState(dir))
		}
	})
	t.Run("committed, hypervisor killed", func(t *testing.T) {
		_, fk, m, dir := newSavedFake(t, "c3")
		if err := saver(fk, dir, "c3").Save(ctx, driver.Machine{Name: "c3", Dir: dir}, savingPath(dir)); err != nil {
			t.Fatal(err)
		}
		if err := commitSave(dir); err != nil {
			t.Fatal(err)
		}
		fk.Crash(dir)
		expectState(t, m, Saved)
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, Running)
	})
	t.Run("resumed, file not yet removed", func(t *testing.T) {
		// A resume loaded the state but did not remove the file: the
		// machine is the loaded guest, and the next locked operation
		// removes the stale file.
		_, fk, m, dir := newSavedFake(t, "c4")
		if err := m.Save(ctx); err != nil {
			t.Fatal(err)
		}
		keep, err := os.ReadFile(savedStatePath(dir))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(savedStatePath(dir), keep, 0o600); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, Running)
		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if hasSavedState(dir) {
			t.Fatal("the stale state file survived a locked operation")
		}
		if err := m.PowerDown(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, PoweredOff)
		if fk.Boot(dir) != 1 {
			t.Fatalf("boot %d", fk.Boot(dir))
		}
	})
}
