package vmfest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/spec"
)

// The orchestration's lifecycle, error and crash-safety paths against the
// in-memory fake driver: no QEMU, milliseconds, run with -short too. The
// same paths against real QEMU are in e2e_test.go and local_test.go.

// newFakeServer returns a Local over a fresh state directory whose machines
// run on a fake driver with options o.
func newFakeServer(t *testing.T, o fake.Options) (*Local, *fake.Driver) {
	t.Helper()
	fk := fake.New(o)
	l, err := NewLocal(Config{Home: t.TempDir(), Driver: fk, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return l, fk
}

// natHardware is one NAT NIC (the fake makes no taps) on the micro shape,
// with VMFest's IDE storage (boot disk at [IDE Controller, 0]) that the
// slot tests are written against; micro itself boots from virtio.
func natHardware() Hardware {
	h := spec.BuiltinHardware()["micro"]
	h.Network = []spec.NIC{{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterVirtio}}
	h.Storage, h.BootMountPoint = spec.DefaultStorage(), &spec.MountPoint{Controller: spec.DefaultIDEName}
	return HardwareSpec(h)
}

func TestFakeLifecycle(t *testing.T) {
	l, fk := newFakeServer(t, fake.Options{ShutdownDelay: 20 * time.Millisecond})
	ctx := ctxTimeout(t, 30*time.Second)
	img := blankImage(t, t.TempDir())
	m, err := l.Instance(ctx, "f1", ImageSpec(img), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	dir := l.home.MachinePath("f1")
	expectState(t, m, PoweredOff)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, Running)
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	// What the driver was given: the overlay over the caller's raw file,
	// every format spelled out, and the NAT NIC's SSH forward.
	s, starts := fk.Started(dir)
	want := driver.Disk{Path: filepath.Join(dir, "disk.qcow2"), Format: "qcow2", BackingPath: img.Location, BackingFormat: "raw"}
	if s.Disk != want || starts != 1 {
		t.Fatalf("driver got disk %+v (%d starts), want %+v", s.Disk, starts, want)
	}
	if len(s.NICs) != 1 || s.NICs[0].SSHPort == 0 || s.ID == "" || s.Name != "f1" {
		t.Fatalf("driver got %+v", s)
	}
	info, err := m.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Driver != "fake" || info.PID == 0 || info.Accel != "tcg" || info.Networks[0].SSH != fmt.Sprintf("127.0.0.1:%d", s.NICs[0].SSHPort) {
		t.Fatalf("info = %+v", info)
	}
	if a, err := m.IP(ctx, 0); err != nil || a.Port != s.NICs[0].SSHPort || a.Source != SourceNATForward {
		t.Fatalf("IP = %+v, %v", a, err)
	}

	for _, c := range []struct {
		op   func(context.Context) error
		want State
	}{{m.Pause, Paused}, {m.Resume, Running}, {m.Stop, PoweredOff}, {m.Start, Running}, {m.PowerDown, PoweredOff}} {
		if err := c.op(ctx); err != nil {
			t.Fatal(err)
		}
		expectState(t, m, c.want)
	}
	if log, err := m.ConsoleLog(ctx); err != nil || !strings.Contains(string(log), "f1 booted") {
		t.Fatalf("console = %q, %v", log, err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("machine directory survived destroy: %v", err)
	}
	if len(fk.Running()) != 0 {
		t.Fatalf("still running: %v", fk.Running())
	}
}

func TestFakeWrongStateChangesNothing(t *testing.T) {
	l, _ := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	m, err := l.Instance(ctx, "ws", ImageSpec(blankImage(t, t.TempDir())), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	type call struct {
		name string
		fn   func(context.Context) error
	}
	check := func(st State, calls []call) {
		t.Helper()
		for _, c := range calls {
			err := c.fn(ctx)
			var se *StateError
			if !errors.As(err, &se) || !errors.Is(err, ErrWrongState) || se.State != st {
				t.Fatalf("%s on a %s machine: %v", c.name, st, err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("cannot %s machine \"ws\": it is %s", c.name, st)) {
				t.Errorf("message: %v", err)
			}
			expectState(t, m, st)
		}
	}
	check(PoweredOff, []call{{"pause", m.Pause}, {"resume", m.Resume}, {"stop", m.Stop}, {"power-down", m.PowerDown}, {"wait for", m.WaitReady}})
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	check(Running, []call{{"start", m.Start}, {"resume", m.Resume}, {"destroy", func(ctx context.Context) error { return m.Destroy(ctx) }}})
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	check(Paused, []call{{"start", m.Start}, {"pause", m.Pause}, {"stop", m.Stop}, {"destroy", func(ctx context.Context) error { return m.Destroy(ctx) }}, {"wait for", m.WaitReady}})
}

func TestFakeStop(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		l, _ := newFakeServer(t, fake.Options{IgnorePowerButton: true})
		ctx := ctxTimeout(t, 30*time.Second)
		m, err := l.Instance(ctx, "deaf", ImageSpec(blankImage(t, t.TempDir())), natHardware())
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		stopped := make(chan error, 1)
		go func() { stopped <- m.Stop(sctx) }()
		// While the stop waits, every reader sees the machine stopping.
		waitState(ctx, t, m, Stopping)
		err = <-stopped
		if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "still running") {
			t.Fatalf("err = %v", err)
		}
		expectState(t, m, Running)
		if err := m.PowerDown(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no acpi", func(t *testing.T) {
		l, _ := newFakeServer(t, fake.Options{})
		ctx := ctxTimeout(t, 30*time.Second)
		h := natHardware()
		off := false
		h.Spec.ACPIEnabled = &off
		m, err := l.Instance(ctx, "noacpi", ImageSpec(blankImage(t, t.TempDir())), h)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m.Stop(ctx); !errors.Is(err, ErrWrongState) || !strings.Contains(err.Error(), "power-down") {
			t.Fatalf("stop without ACPI: %v", err)
		}
		expectState(t, m, Running)
	})
}

// waitState waits until m reads want, bounded by ctx.
func waitState(ctx context.Context, t *testing.T, m Machine, want State) {
	t.Helper()
	for {
		st, err := m.State(ctx)
		if err == nil && st == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: state = %s (%v), want %s", m.Name(), st, err, want)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestFakeCrash: a machine whose hypervisor died reads aborted for every
// reader and Doctor, starts again (the leftovers cleaned first) and can be
// powered down.
func TestFakeCrash(t *testing.T) {
	l, fk := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	m, err := l.Instance(ctx, "c1", ImageSpec(blankImage(t, t.TempDir())), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	dir := l.home.MachinePath("c1")
	for i, after := range []func() error{
		func() error { return m.Start(ctx) },
		func() error { return m.PowerDown(ctx) },
	} {
		if err := m.Start(ctx); err != nil && i == 0 {
			t.Fatal(err)
		}
		fk.Crash(dir)
		expectState(t, m, Aborted)
		found, err := l.Doctor(ctx, false)
		if err != nil || len(found) != 1 || found[0].Kind != "aborted" {
			t.Fatalf("doctor = %+v, %v", found, err)
		}
		if err := after(); err != nil {
			t.Fatal(err)
		}
	}
	expectState(t, m, PoweredOff)
	if _, starts := fk.Started(dir); starts != 2 {
		t.Fatalf("%d starts, want 2", starts)
	}
}

// TestFakeStartFailures: a start that fails at the driver undoes what it
// did and leaves the machine as it was; the error says why.
func TestFakeStartFailures(t *testing.T) {
	for _, c := range []struct {
		name   string
		op     string
		err    error
		target error
		says   string
	}{
		{"memory", "Start", errors.New("cannot set up guest memory 'pc.ram': Cannot allocate memory"), ErrUnavailable, "memory-size"},
		{"launch", "Start", errors.New("boom"), nil, "launch the machine: fake Start: boom"},
		{"clean", "Clean", errors.New("stuck"), nil, "clean leftovers of the last run: fake Clean: stuck"},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, fk := newFakeServer(t, fake.Options{})
			ctx := ctxTimeout(t, 30*time.Second)
			m, err := l.Instance(ctx, "sf", ImageSpec(blankImage(t, t.TempDir())), natHardware())
			if err != nil {
				t.Fatal(err)
			}
			before := readTestRecord(t, l, "sf")
			fk.Fail(c.op, c.err)
			err = m.Start(ctx)
			if err == nil || (c.target != nil && !errors.Is(err, c.target)) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("err = %v, want %v saying %q", err, c.target, c.says)
			}
			expectState(t, m, PoweredOff)
			after := readTestRecord(t, l, "sf")
			if after.Accel != before.Accel || after.Driver != before.Driver {
				t.Fatalf("record changed: %+v -> %+v", before, after)
			}
			if err := m.Start(ctx); err != nil {
				t.Fatalf("start after a failed start: %v", err)
			}
		})
	}
}

// TestFakeFeatures: a machine the driver cannot run is refused at start,
// before anything is made, with the reason.
func TestFakeFeatures(t *testing.T) {
	noNAT := &driver.Features{DiskFormats: []string{"qcow2", "raw"}, BackingChain: true, GuestAgent: true}
	qcow2Only := &driver.Features{DiskFormats: []string{"qcow2"}, BackingChain: true, UserNAT: true}
	hostOnly := spec.BuiltinHardware()["micro"]
	for _, c := range []struct {
		name string
		f    *driver.Features
		hw   Hardware
		says string
	}{
		{"no nat", noNAT, natHardware(), "no user-mode NAT"},
		{"no raw", qcow2Only, HardwareSpec(spec.Hardware{}), "does not open raw disks"},
		{"no taps", nil, HardwareSpec(hostOnly), "network[0] (host-only): the fake driver cannot put a NIC on a host tap"},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, fk := newFakeServer(t, fake.Options{Features: c.f})
			ctx := ctxTimeout(t, 30*time.Second)
			m, err := l.Instance(ctx, "nf", ImageSpec(blankImage(t, t.TempDir())), c.hw)
			if err != nil {
				t.Fatal(err)
			}
			err = m.Start(ctx)
			if !errors.Is(err, driver.ErrUnsupported) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("err = %v, want one saying %q", err, c.says)
			}
			expectState(t, m, PoweredOff)
			if _, starts := fk.Started(l.home.MachinePath("nf")); starts != 0 {
				t.Fatal("the driver was asked to start it")
			}
		})
	}
}

// TestMachineKeepsItsDriver: a machine is run by the driver its record
// names, whatever the server's default; a server that cannot make that
// driver says so.
func TestMachineKeepsItsDriver(t *testing.T) {
	l, _ := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := l.Instance(ctx, "mine", ImageSpec(blankImage(t, t.TempDir())), natHardware()); err != nil {
		t.Fatal(err)
	}
	if r := readTestRecord(t, l, "mine"); r.Driver != "fake" {
		t.Fatalf("record names driver %q", r.Driver)
	}
	other, err := NewLocal(Config{Home: l.Home(), Accel: "tcg", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	m, err := other.FindMachine(ctx, "mine")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.State(ctx); err == nil || !strings.Contains(err.Error(), `driver "fake"`) || !strings.Contains(err.Error(), "the fake driver cannot be used on this server") {
		t.Fatalf("state through a server without the fake driver: %v", err)
	}
}

// TestWithDriver: a machine made with WithDriver names that driver in its
// record and is run by it; an unknown driver is refused and nothing made.
func TestWithDriver(t *testing.T) {
	l, _ := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	img := ImageSpec(blankImage(t, t.TempDir()))
	if _, err := l.Instance(ctx, "q", img, natHardware(), WithDriver("qemu")); err != nil {
		t.Fatal(err)
	}
	if r := readTestRecord(t, l, "q"); r.Driver != "qemu" {
		t.Fatalf("record names %q, want qemu", r.Driver)
	}
	if _, err := l.Instance(ctx, "x", img, natHardware(), WithDriver("vbox")); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `driver "vbox"`) {
		t.Fatalf("an unknown driver: %v", err)
	}
	if _, err := l.FindMachine(ctx, "x"); !errors.Is(err, ErrNotFound) {
		t.Fatal("a refused create left a machine")
	}
}

// TestStartNewSSHPort: a start whose SSH forward's port was taken between
// its choice and the hypervisor's bind chooses another and starts.
func TestStartNewSSHPort(t *testing.T) {
	l, fk := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	m, err := l.Instance(ctx, "p", ImageSpec(blankImage(t, t.TempDir())), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	fk.Fail("Start", errors.New("qemu-system-x86_64: -netdev user,id=net0,hostfwd=tcp:127.0.0.1:45677-:22: Could not set up host forwarding rule 'tcp:127.0.0.1:45677-:22'"))
	if err := m.Start(ctx); err != nil {
		t.Fatalf("start after a taken port: %v", err)
	}
	s, starts := fk.Started(l.home.MachinePath("p"))
	a, err := m.IP(ctx, 0)
	if err != nil || starts != 1 || a.Port != s.NICs[0].SSHPort || a.Port < 20000 || a.Port > 32767 {
		t.Fatalf("after the retry: IP %+v (%v), driver's port %d, %d starts; want the new port, in 20000-32767", a, err, s.NICs[0].SSHPort, starts)
	}
}
