package vmfest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/vmfest/vmfest/driver"
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
	st, err := m.status(ctx, r)
	if err != nil {
		return err
	}
	if runs(st.State) && hasSavedState(m.dir()) {
		// A resume that finished but was cut short before it removed the
		// file: the guest runs on from it, so the file must never be
		// resumed again.
		if err := discardSavedState(m.dir()); err != nil {
			return fmt.Errorf("machine %s: %w", m.name, err)
		}
	}
	return fn(r, st.State)
}

// drv returns the driver that runs the machine.
func (m *localMachine) drv(r record) (driver.Driver, error) {
	d, err := m.l.driverNamed(r.Driver)
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", m.name, err)
	}
	return d, nil
}

// ref is the machine as its driver knows it.
func (m *localMachine) ref(r record) driver.Machine {
	return driver.Machine{Name: m.name, Dir: m.dir(), ID: r.Net.ID}
}

func (m *localMachine) need(op string, st State, allowed ...State) error {
	if slices.Contains(allowed, st) {
		return nil
	}
	return &StateError{Machine: m.name, Op: op, State: st, Needs: allowed}
}

// Pause implements Machine.
func (m *localMachine) Pause(ctx context.Context) error {
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("pause", st, Running); err != nil {
			return err
		}
		d, err := m.drv(r)
		if err != nil {
			return err
		}
		if err := d.Pause(ctx, m.ref(r)); err != nil {
			return fmt.Errorf("pause machine %s: %w", m.name, err)
		}
		return nil
	})
}

// Resume implements Machine.
func (m *localMachine) Resume(ctx context.Context) error {
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("resume", st, Paused); err != nil {
			return err
		}
		d, err := m.drv(r)
		if err != nil {
			return err
		}
		if err := d.Resume(ctx, m.ref(r)); err != nil {
			return fmt.Errorf("resume machine %s: %w", m.name, err)
		}
		if r.Reidentify != nil {
			// A clone of a paused machine, resumed for the first time.
			m.setClock(ctx, d, r)
			if err := m.reidentify(ctx, d); err != nil {
				m.l.log.Warn("the clone runs with its source's identity", "machine", m.name, "err", err)
			}
		}
		return nil
	})
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
	var d driver.Driver
	var ref driver.Machine
	err := m.locked(ctx, func(r record, st State) (err error) {
		if err := m.need("stop", st, Running, Stopping); err != nil {
			return err
		}
		if r.Hardware.ACPIEnabled != nil && !*r.Hardware.ACPIEnabled {
			return fmt.Errorf("%w: cannot stop machine %q: acpi-enabled is false, so the guest has no power button; use power-down", ErrWrongState, m.name)
		}
		if d, err = m.drv(r); err != nil {
			return err
		}
		ref = m.ref(r)
		if err := markStopping(m.dir(), until); err != nil {
			return fmt.Errorf("stop machine %s: %w", m.name, err)
		}
		if err := d.PowerButton(ctx, ref); err != nil {
			clearStopping(m.dir())
			return fmt.Errorf("stop machine %s: %w", m.name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Wait without the lock, so a power-down can still cut a stop short.
	if err := d.WaitExit(ctx, ref); err != nil {
		clearStopping(m.dir())
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("stop machine %s: %w: the guest did not power off after the ACPI power button within %s; it is still running (power-down forces it off)",
				m.name, ErrTimeout, roundDuration(time.Since(begun)))
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
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return nil
	}
	if st, err := m.status(ctx, r); err != nil || runs(st.State) {
		return nil // started again meanwhile
	}
	clearStopping(m.dir())
	m.settleNetworks(ctx, r)
	return nil
}

// PowerDown implements Machine.
func (m *localMachine) PowerDown(ctx context.Context) error {
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("power-down", st, Running, Paused, Stopping, Aborted, Saved); err != nil {
			return err
		}
		d, err := m.drv(r)
		if err != nil {
			return err
		}
		if st == Saved {
			return m.discardSaved(ctx, d, r, "power-down")
		}
		if st != Aborted {
			if err := d.PowerOff(ctx, m.ref(r)); err != nil {
				return fmt.Errorf("power-down machine %s: %w", m.name, err)
			}
		}
		if err := d.Clean(ctx, m.ref(r)); err != nil {
			return fmt.Errorf("power-down machine %s: %w", m.name, err)
		}
		clearStopping(m.dir())
		m.settleNetworks(ctx, r)
		return nil
	})
}

// Destroy implements Machine.
func (m *localMachine) Destroy(ctx context.Context, opts ...DestroyOption) error {
	return m.destroy(ctx, destroyOpts(opts), nil)
}

// destroy is Destroy; at, when set (by crash tests), is called at each
// named point where a crash leaves a distinct state.
func (m *localMachine) destroy(ctx context.Context, o destroyOptions, at func(point string)) error {
	point := func(p string) {
		if at != nil {
			at(p)
		}
	}
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("destroy", st, PoweredOff, Aborted, Saved); err != nil {
			return err
		}
		d, err := m.drv(r)
		if err != nil {
			return err
		}
		if st == Saved {
			// A hypervisor that still holds the saved state goes first;
			// the file goes with the directory.
			if err := m.endSavedRun(ctx, d, r); err != nil {
				return fmt.Errorf("destroy machine %s: %w", m.name, err)
			}
		}
		// What the driver keeps outside the directory (a libvirt domain)
		// goes first: a crash after this leaves a whole machine, whose
		// next start defines it again.
		if err := d.Forget(ctx, m.ref(r)); err != nil {
			return fmt.Errorf("destroy machine %s: %w", m.name, err)
		}
		point("destroy:forgotten")
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
		point("destroy:trash")
		gone := filepath.Join(trash, m.name)
		if err := os.Rename(m.dir(), gone); err != nil {
			os.Remove(trash)
			return fmt.Errorf("destroy machine %s: %w", m.name, err)
		}
		point("destroy:moved")
		var errs []error
		if !r.Overlay && !o.keepDisk {
			if err := m.l.removeMutableDisk(ctx, m.name, r.Image.Location); err != nil {
				errs = append(errs, err)
			}
		}
		point("destroy:disk")
		if err := os.RemoveAll(trash); err != nil {
			errs = append(errs, err)
		}
		point("destroy:removed")
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
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return "", err
	}
	st, err := m.status(ctx, r)
	if err != nil {
		return "", err
	}
	return st.State, nil
}

// Info implements Machine.
func (m *localMachine) Info(ctx context.Context) (Info, error) {
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return Info{}, err
	}
	st, err := m.status(ctx, r)
	if err != nil {
		return Info{}, err
	}
	info := Info{
		Name:         m.name,
		State:        st.State,
		Driver:       m.l.driverName(r.Driver),
		Image:        r.ImageModel,
		Hardware:     r.HardwareModel,
		Accel:        r.Accel,
		Disk:         r.disk(m.dir()),
		Created:      r.Created,
		SerialLog:    filepath.Join(m.dir(), store.SerialLog),
		HardwareSpec: r.Hardware,
		ImageSpec:    r.Image,
		Labels:       r.Labels,
		UserData:     r.UserData,
		GenerationID: r.GenID,
	}
	if r.Reidentify != nil {
		info.ReidentifyPending = r.Reidentify.Source
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
	info.PID = st.PID
	info.Networks = m.nicInfos(r, st.State)
	for _, pm := range r.media() {
		info.Media = append(info.Media, MediaInfo{Slot: pm.at, DeviceType: pm.dev.DeviceType, Volume: pm.dev.Volume, Path: m.l.mediaPath(pm.dev)})
	}
	return info, nil
}

// WaitReady implements Machine.
func (m *localMachine) WaitReady(ctx context.Context) error {
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return err
	}
	st, err := m.status(ctx, r)
	if err != nil {
		return err
	}
	if err := m.need("wait for", st.State, Running); err != nil {
		return err
	}
	d, err := m.drv(r)
	if err != nil {
		return err
	}
	for {
		a, err := d.Agent(ctx, m.ref(r))
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
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return nil, err
	}
	d, err := m.drv(r)
	if err != nil {
		return nil, err
	}
	data, err := d.Console(ctx, m.ref(r))
	if err != nil {
		return nil, fmt.Errorf("console of machine %s: %w", m.name, err)
	}
	return data, nil
}
