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
	"time"

	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/store"
)

// localMachine is a handle on a machine of a Local server. It holds only
// the name: everything else is read from disk and QEMU on each call.
type localMachine struct {
	l    *Local
	name string
}

func (m *localMachine) Name() string { return m.name }

func (m *localMachine) dir() string { return m.l.home.MachinePath(m.name) }

// locked runs fn holding the machine's lock, with its record and state.
func (m *localMachine) locked(ctx context.Context, fn func(r record, st State) error) error {
	lk, err := store.LockDir(ctx, m.dir())
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: machine %q", ErrNotFound, m.name)
		}
		return fmt.Errorf("machine %s: %w", m.name, err)
	}
	defer lk.Unlock()
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return err
	}
	st, err := qemu.Inspect(ctx, m.dir())
	if err != nil {
		return fmt.Errorf("machine %s: %w", m.name, err)
	}
	return fn(r, st)
}

func (m *localMachine) need(op string, st State, allowed ...State) error {
	if slices.Contains(allowed, st) {
		return nil
	}
	return &StateError{Machine: m.name, Op: op, State: st, Needs: allowed}
}

// Start implements Machine.
func (m *localMachine) Start(ctx context.Context) error {
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("start", st, PoweredOff, Aborted); err != nil {
			return err
		}
		return m.start(ctx, r)
	})
}

// start runs the start-up steps, undoing what was done if one fails.
func (m *localMachine) start(ctx context.Context, r record) (err error) {
	var undo []func()
	var ns *netStart // see networks.go
	var disk qemu.Disk
	defer func() { ns.unlock() }()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	steps := []struct {
		name string
		fn   func() error
	}{
		{"clean leftovers of the last run", func() error { return qemu.Clean(ctx, m.dir()) }},
		{"check the disk", func() (err error) {
			if _, err := os.Stat(r.disk(m.dir())); err != nil {
				return fmt.Errorf("disk: %w", err)
			}
			if disk, err = r.qemuDisk(m.dir()); err != nil {
				return err
			}
			if r.ImageModel != "" {
				return nil // installed models were checked when installed
			}
			// The caller's file may have changed since the machine was
			// made: check it again, as its recorded format.
			format := disk.Format
			if r.Overlay {
				format = disk.BackingFormat
			}
			_, err = checkDisk(r.Image.Location, format)
			return err
		}},
		{"set up the networks", func() (err error) {
			if ns, err = m.setUpNetworks(ctx, &r); err == nil {
				undo = append(undo, ns.undo)
			}
			return err
		}},
		{"choose the accelerator", func() error {
			accel, note, err := qemu.ChooseAccel(m.l.cfg.Accel, qemu.DefaultHost())
			if err != nil {
				return err
			}
			if note != "" {
				m.l.log.Warn(note, "machine", m.name)
			}
			if accel != r.Accel {
				r.Accel = accel
				return writeRecord(m.dir(), r)
			}
			return nil
		}},
		{"launch QEMU", func() error {
			cfg := qemu.Config{
				Name:     m.name,
				Dir:      m.dir(),
				Hardware: r.Hardware,
				Disk:     disk,
				Accel:    r.Accel,
				Binary:   m.l.cfg.QEMU,
				NICs:     ns.backends,
				CIData:   ns.cidata,
			}
			if err := qemu.Start(ctx, cfg); err != nil {
				return memoryError(err, r.Hardware.MemorySize)
			}
			undo = append(undo, func() {
				qemu.Kill(m.dir())
				qemu.WaitExit(context.Background(), m.dir())
				qemu.Clean(context.Background(), m.dir())
			})
			return nil
		}},
		{"plug the NICs into their networks", func() error { return ns.plug() }},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return fmt.Errorf("start machine %s: %s: %w", m.name, s.name, err)
		}
	}
	m.l.log.Debug("machine started", "machine", m.name, "accel", r.Accel)
	return nil
}

// memoryError words QEMU's failure to allocate the guest's memory as the
// host's limit (ErrUnavailable, naming memory-size); other errors are
// returned as they are. QEMU says so only in its message.
func memoryError(err error, mib int) error {
	if !strings.Contains(err.Error(), "cannot set up guest memory") {
		return err
	}
	avail := "unknown"
	if n, aerr := hostMemory("MemAvailable"); aerr == nil {
		avail = fmt.Sprintf("%d MiB", n)
	}
	return fmt.Errorf("%w: memory-size: the host cannot give the machine its %d MiB now (available: %s); stop other machines or lower memory-size: %w", ErrUnavailable, mib, avail, err)
}

// Pause implements Machine.
func (m *localMachine) Pause(ctx context.Context) error {
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("pause", st, Running); err != nil {
			return err
		}
		return m.qmp(ctx, "pause", "stop")
	})
}

// Resume implements Machine.
func (m *localMachine) Resume(ctx context.Context) error {
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("resume", st, Paused); err != nil {
			return err
		}
		return m.qmp(ctx, "resume", "cont")
	})
}

func (m *localMachine) qmp(ctx context.Context, op, command string) error {
	if _, err := qemu.RunQMP(ctx, filepath.Join(m.dir(), qemu.QMPSocket), command, nil); err != nil {
		return fmt.Errorf("%s machine %s: %w", op, m.name, err)
	}
	return nil
}

// Stop implements Machine.
func (m *localMachine) Stop(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultStopTimeout)
		defer cancel()
	}
	until, _ := ctx.Deadline()
	begun := time.Now()
	err := m.locked(ctx, func(r record, st State) error {
		if err := m.need("stop", st, Running, Stopping); err != nil {
			return err
		}
		if r.Hardware.ACPIEnabled != nil && !*r.Hardware.ACPIEnabled {
			return fmt.Errorf("%w: cannot stop machine %q: acpi-enabled is false, so the guest has no power button; use power-down", ErrWrongState, m.name)
		}
		if err := qemu.MarkStopping(m.dir(), until); err != nil {
			return fmt.Errorf("stop machine %s: %w", m.name, err)
		}
		if err := m.qmp(ctx, "stop", "system_powerdown"); err != nil {
			qemu.ClearStopping(m.dir())
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Wait without the lock, so a power-down can still cut a stop short.
	if err := qemu.WaitExit(ctx, m.dir()); err != nil {
		qemu.ClearStopping(m.dir())
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("stop machine %s: %w: the guest did not power off after the ACPI power button within %s; it is still running (power-down forces it off)",
				m.name, ErrTimeout, time.Since(begun).Round(100*time.Millisecond))
		}
		return fmt.Errorf("stop machine %s: %w", m.name, err)
	}
	return m.cleanAfterExit(ctx)
}

func (m *localMachine) cleanAfterExit(ctx context.Context) error {
	lk, err := store.LockDir(ctx, m.dir())
	if err != nil {
		return nil // destroyed meanwhile: nothing left to clean
	}
	defer lk.Unlock()
	if _, alive, _ := qemu.PID(m.dir()); alive {
		return nil // started again meanwhile
	}
	qemu.ClearStopping(m.dir())
	if r, err := m.l.readRecord(m.name); err == nil {
		m.settleNetworks(ctx, r)
	}
	return nil
}

// PowerDown implements Machine.
func (m *localMachine) PowerDown(ctx context.Context) error {
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("power-down", st, Running, Paused, Stopping, Aborted); err != nil {
			return err
		}
		if st != Aborted {
			qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			qemu.DrainConsole(qctx, m.dir()) // the ring dies with QEMU
			_, err := qemu.RunQMP(qctx, filepath.Join(m.dir(), qemu.QMPSocket), "quit", nil)
			cancel()
			if err != nil {
				m.l.log.Debug("QMP quit failed; killing QEMU", "machine", m.name, "err", err)
			}
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = qemu.WaitExit(wctx, m.dir())
			cancel()
			if err != nil {
				if err := qemu.Kill(m.dir()); err != nil {
					return fmt.Errorf("power-down machine %s: %w", m.name, err)
				}
				if err := qemu.WaitExit(ctx, m.dir()); err != nil {
					return fmt.Errorf("power-down machine %s: QEMU did not exit: %w", m.name, err)
				}
			}
		}
		if err := qemu.Clean(ctx, m.dir()); err != nil {
			return fmt.Errorf("power-down machine %s: %w", m.name, err)
		}
		m.settleNetworks(ctx, r)
		return nil
	})
}

// Destroy implements Machine.
func (m *localMachine) Destroy(ctx context.Context) error {
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("destroy", st, PoweredOff, Aborted); err != nil {
			return err
		}
		// Move the directory out of the way first: from here on the machine
		// is gone for every reader, and a crash leaves only a hidden
		// directory for the sweep, never half a machine.
		busy, err := store.LockDirShared(ctx, m.l.home.MachinesPath())
		if err != nil {
			return fmt.Errorf("destroy machine %s: %w", m.name, err)
		}
		defer busy.Unlock()
		trash, err := os.MkdirTemp(m.l.home.MachinesPath(), ".destroying-"+m.name+"-")
		if err != nil {
			return fmt.Errorf("destroy machine %s: %w", m.name, err)
		}
		m.l.point("destroy:trash")
		gone := filepath.Join(trash, m.name)
		if err := os.Rename(m.dir(), gone); err != nil {
			os.Remove(trash)
			return fmt.Errorf("destroy machine %s: %w", m.name, err)
		}
		m.l.point("destroy:moved")
		var errs []error
		if !r.Overlay {
			if err := m.l.removeMutableDisk(ctx, m.name, r.Image.Location); err != nil {
				errs = append(errs, err)
			}
		}
		m.l.point("destroy:disk")
		if err := os.RemoveAll(trash); err != nil {
			errs = append(errs, err)
		}
		m.l.point("destroy:removed")
		if err := m.l.releaseNetworks(ctx, r); err != nil {
			errs = append(errs, fmt.Errorf("release its network addresses: %w", err))
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("destroy machine %s: %w", m.name, err)
		}
		return nil
	})
}

// State implements Machine.
func (m *localMachine) State(ctx context.Context) (State, error) {
	if _, err := os.Stat(m.dir()); errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: machine %q", ErrNotFound, m.name)
	}
	st, err := qemu.Inspect(ctx, m.dir())
	if err != nil {
		return "", fmt.Errorf("machine %s: %w", m.name, err)
	}
	return st, nil
}

// Info implements Machine.
func (m *localMachine) Info(ctx context.Context) (Info, error) {
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return Info{}, err
	}
	st, err := m.State(ctx)
	if err != nil {
		return Info{}, err
	}
	info := Info{
		Name:         m.name,
		State:        st,
		Image:        r.ImageModel,
		Hardware:     r.HardwareModel,
		Accel:        r.Accel,
		Disk:         r.disk(m.dir()),
		Created:      r.Created,
		SerialLog:    filepath.Join(m.dir(), qemu.SerialLog),
		HardwareSpec: r.Hardware,
		ImageSpec:    r.Image,
	}
	if info.Image == "" {
		info.Image = r.Image.Location
	}
	if info.Hardware == "" {
		info.Hardware = "custom"
	}
	if r.Overlay {
		info.BaseImage = r.Image.Location
	}
	if pid, alive, _ := qemu.PID(m.dir()); alive {
		info.PID = pid
	}
	info.Networks = m.nicInfos(r, st)
	return info, nil
}

// WaitReady implements Machine.
func (m *localMachine) WaitReady(ctx context.Context) error {
	st, err := m.State(ctx)
	if err != nil {
		return err
	}
	if err := m.need("wait for", st, Running); err != nil {
		return err
	}
	sock := filepath.Join(m.dir(), qemu.QGASocket)
	for {
		a, err := qemu.DialAgent(ctx, sock)
		if err == nil {
			a.Close()
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("machine %s: %w: the guest agent did not answer: %w", m.name, ErrTimeout, ctx.Err())
		}
		if st, serr := m.State(ctx); serr == nil && st != Running {
			return fmt.Errorf("machine %s: it became %s while waiting for the guest agent", m.name, st)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ConsoleLog implements Machine.
func (m *localMachine) ConsoleLog(ctx context.Context) ([]byte, error) {
	if _, err := os.Stat(m.dir()); err != nil {
		return nil, fmt.Errorf("%w: machine %q", ErrNotFound, m.name)
	}
	data, err := qemu.ReadConsole(ctx, m.dir())
	if err != nil {
		return nil, fmt.Errorf("console of machine %s: %w", m.name, err)
	}
	return data, nil
}
