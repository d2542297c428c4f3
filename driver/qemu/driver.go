package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
)

// Options configures the QEMU driver. The zero value is usable.
type Options struct {
	// Binary is the system emulator; default qemu-system-x86_64.
	Binary string
	// Accel is kvm, tcg or auto (the default): see ChooseAccel.
	Accel string
	// Host is where the accelerator is probed; default DefaultHost().
	Host *Host
	// Logger receives warnings (TCG chosen for lack of KVM); default
	// slog.Default().
	Logger *slog.Logger
}

// Driver runs each machine as a detached QEMU process of its own, driven
// through QMP; the machine directory holds its pidfile, QMP and guest-agent
// sockets and console log. Nothing besides QEMU runs per machine, and any
// process reads a machine's true state back from the locked pidfile and QMP.
type Driver struct {
	opts Options
}

var (
	_ driver.Driver = (*Driver)(nil)
	_ driver.Saver  = (*Driver)(nil)
)

// New returns the QEMU driver; it fails on an accelerator it does not know
// or cannot use on this host.
func New(o Options) (*Driver, error) {
	if o.Host == nil {
		h := DefaultHost()
		o.Host = &h
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if _, _, err := ChooseAccel(o.Accel, *o.Host); err != nil {
		return nil, err
	}
	return &Driver{opts: o}, nil
}

// Info implements driver.Driver.
func (d *Driver) Info() driver.Info {
	return driver.Info{Name: "qemu", Features: driver.Features{
		DiskFormats:  []string{spec.DiskFormatQCOW2, spec.DiskFormatRaw},
		BackingChain: true,
		UserNAT:      true,
		Taps:         true,
		Pause:        true,
		PowerButton:  true,
		GuestAgent:   true,
		Console:      true,
		// Saved state (Save, StartSpec.Incoming), memory templates
		// (Template, StartSpec.MemoryTemplate).
		MemorySnapshots: true,
	}}
}

// Start implements driver.Lifecycle.
func (d *Driver) Start(ctx context.Context, s driver.StartSpec) (driver.Started, error) {
	accel, note, err := ChooseAccel(d.opts.Accel, *d.opts.Host)
	if err != nil {
		return driver.Started{}, err
	}
	if note != "" {
		d.opts.Logger.Warn(note, "machine", s.Name)
	}
	cfg := d.config(s, accel)
	cfg.NICs, cfg.LoadVM = s.NICs, s.Snapshot
	if s.Snapshot != "" {
		if cfg.PCI, err = readSnapshotPCI(s.Dir, s.Snapshot); err != nil {
			return driver.Started{}, err
		}
	}
	var restored driver.State
	if s.MemoryTemplate != "" && s.Incoming == "" {
		return driver.Started{}, errors.New("a memory template is started from its state (Incoming), and none was given")
	}
	if s.Incoming != "" {
		f, h, err := openIncoming(s.Incoming)
		if err != nil {
			return driver.Started{}, err
		}
		defer f.Close()
		cfg.Incoming, cfg.PCI, restored = f, h.PCI, h.State
		switch {
		case h.SharedMemory && s.MemoryTemplate == "":
			return driver.Started{}, fmt.Errorf("saved state %s holds no RAM and needs its memory template's file, which was not given", s.Incoming)
		case !h.SharedMemory && s.MemoryTemplate != "":
			return driver.Started{}, fmt.Errorf("saved state %s holds the whole RAM and takes no memory template", s.Incoming)
		case h.SharedMemory:
			cfg.MemoryFile, cfg.IgnoreShared = s.MemoryTemplate, true
		}
	}
	if err := Start(ctx, cfg); err != nil {
		return driver.Started{}, err
	}
	if cfg.IgnoreShared {
		if err := startTemplateIncoming(ctx, s.Dir); err != nil {
			Kill(s.Dir)
			return driver.Started{}, fmt.Errorf("load the saved state: %w", err)
		}
	}
	if cfg.Incoming != nil {
		if err := waitIncoming(ctx, s.Dir); err != nil {
			Kill(s.Dir)
			return driver.Started{}, err
		}
	}
	return driver.Started{Accel: accel, Restored: restored}, nil
}

// Status implements driver.Lifecycle.
func (d *Driver) Status(ctx context.Context, m driver.Machine) (driver.Status, error) {
	st, err := Inspect(ctx, m.Dir)
	if err != nil {
		return driver.Status{}, err
	}
	out := driver.Status{State: st}
	if pid, alive, _ := PID(m.Dir); alive {
		out.PID = pid
		if fi, err := os.Stat(Config{Dir: m.Dir}.Path(PIDFile)); err == nil {
			out.Since = fi.ModTime()
		}
	}
	return out, nil
}

// Pause implements driver.Lifecycle.
func (d *Driver) Pause(ctx context.Context, m driver.Machine) error {
	return d.qmp(ctx, m, "stop")
}

// Resume implements driver.Lifecycle.
func (d *Driver) Resume(ctx context.Context, m driver.Machine) error {
	return d.qmp(ctx, m, "cont")
}

// PowerButton implements driver.Lifecycle.
func (d *Driver) PowerButton(ctx context.Context, m driver.Machine) error {
	return d.qmp(ctx, m, "system_powerdown")
}

func (d *Driver) qmp(ctx context.Context, m driver.Machine, command string) error {
	_, err := RunQMP(ctx, Config{Dir: m.Dir}.Path(QMPSocket), command, nil)
	return err
}

// PowerOff implements driver.Lifecycle: QMP quit (after draining the
// console ring, which dies with QEMU), then SIGKILL if QEMU has not exited
// within 5 s.
func (d *Driver) PowerOff(ctx context.Context, m driver.Machine) error {
	if _, alive, err := PID(m.Dir); err != nil || !alive {
		return err
	}
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	DrainConsole(qctx, m.Dir)
	_, err := RunQMP(qctx, Config{Dir: m.Dir}.Path(QMPSocket), "quit", nil)
	cancel()
	if err != nil {
		d.opts.Logger.Debug("QMP quit failed; killing QEMU", "machine", m.Name, "err", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = WaitExit(wctx, m.Dir)
	cancel()
	if err == nil {
		return nil
	}
	if err := Kill(m.Dir); err != nil {
		return err
	}
	if err := WaitExit(ctx, m.Dir); err != nil {
		return fmt.Errorf("QEMU did not exit: %w", err)
	}
	return nil
}

// Kill implements driver.Lifecycle.
func (d *Driver) Kill(ctx context.Context, m driver.Machine) error { return Kill(m.Dir) }

// WaitExit implements driver.Lifecycle.
func (d *Driver) WaitExit(ctx context.Context, m driver.Machine) error { return WaitExit(ctx, m.Dir) }

// Clean implements driver.Lifecycle.
func (d *Driver) Clean(ctx context.Context, m driver.Machine) error { return Clean(ctx, m.Dir) }

// Forget implements driver.Lifecycle: QEMU keeps nothing outside the
// machine directory.
func (d *Driver) Forget(ctx context.Context, m driver.Machine) error { return nil }

// Console implements driver.Console.
func (d *Driver) Console(ctx context.Context, m driver.Machine) ([]byte, error) {
	return ReadConsole(ctx, m.Dir)
}

// Agent implements driver.GuestAgent.
func (d *Driver) Agent(ctx context.Context, m driver.Machine) (driver.Agent, error) {
	a, err := DialAgent(ctx, Config{Dir: m.Dir}.Path(QGASocket))
	if err != nil {
		return nil, err
	}
	return a, nil
}

// config is the QEMU configuration of what s asks for that every launch of
// the machine shares (a start and a memory template's making), with the
// accelerator chosen.
func (d *Driver) config(s driver.StartSpec, accel string) Config {
	return Config{
		Name:     s.Name,
		Dir:      s.Dir,
		Hardware: s.Hardware,
		Disk:     s.Disk,
		Accel:    accel,
		Binary:   d.opts.Binary,
		CIData:   s.Seed,
		Drives:   s.Drives,
		GenID:    s.GenID,
	}
}
