package vmfest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Snapshot is a snapshot of a machine, kept inside its overlay: of a
// running or paused machine its disk and memory (MemorySize > 0), of a
// powered-off one its disk. Restoring a memory snapshot brings the machine
// back running where it was. Snapshots never touch the base image and go
// with the machine when it is destroyed.
type Snapshot = driver.Snapshot

// snapshotter is the machine's driver's, or an error saying it has none.
func (m *localMachine) snapshotter(r record) (driver.Snapshotter, string, error) {
	d, err := m.drv(r)
	if err != nil {
		return nil, "", err
	}
	sn, ok := d.(driver.Snapshotter)
	if !ok {
		return nil, "", fmt.Errorf("%w: the %s driver keeps no snapshots (use the qemu driver)", ErrUnsupported, d.Info().Name)
	}
	if !r.Overlay {
		return nil, "", fmt.Errorf("%w: machine %s has no overlay (its image is not immutable, so its disk is your file): snapshots live in vmfest's overlay", ErrUnsupported, m.name)
	}
	return sn, filepath.Join(m.dir(), store.DiskFile), nil
}

// hasDisk says whether the machine's run state has its disk open.
func hasDisk(st State) bool { return st == Running || st == Paused }

// TakeSnapshot implements Machine: a running or paused machine's disk and
// memory (it is paused for as long as that takes), or a powered-off
// machine's disk.
func (m *localMachine) TakeSnapshot(ctx context.Context, name string) (Snapshot, error) {
	if err := store.ValidateName("snapshot", name); err != nil {
		return Snapshot{}, apiError(err)
	}
	var out Snapshot
	err := m.locked(ctx, func(r record, st State) error {
		if err := m.need("snapshot", st, Running, Paused, PoweredOff, Aborted); err != nil {
			return err
		}
		sn, disk, err := m.snapshotter(r)
		if err != nil {
			return err
		}
		running := hasDisk(st)
		if running {
			for _, pm := range r.media() {
				if pm.dev.DeviceType == spec.DeviceHardDisk {
					return fmt.Errorf("%w: machine %s has %s in slot %s, which a memory snapshot would not hold: detach it, or snapshot the powered-off machine (its disk only)", ErrUnsupported, m.name, describeDevice(pm.dev), pm.at)
				}
			}
		}
		snaps, err := sn.Snapshots(ctx, m.ref(r), disk, running)
		if err != nil {
			return fmt.Errorf("snapshot machine %s: %w", m.name, err)
		}
		if slices.ContainsFunc(snaps, func(s Snapshot) bool { return s.Tag == name }) {
			return fmt.Errorf("%w: snapshot %q of machine %s", ErrExists, name, m.name)
		}
		begun := time.Now()
		if err := sn.SaveSnapshot(ctx, m.ref(r), disk, name, running); err != nil {
			return fmt.Errorf("snapshot machine %s: %w", m.name, err)
		}
		if snaps, err = sn.Snapshots(ctx, m.ref(r), disk, running); err != nil {
			return fmt.Errorf("snapshot machine %s: %w", m.name, err)
		}
		i := slices.IndexFunc(snaps, func(s Snapshot) bool { return s.Tag == name })
		if i < 0 {
			return fmt.Errorf("snapshot machine %s: snapshot %q is not in its disk after it was taken", m.name, name)
		}
		out = snaps[i]
		m.l.log.Debug("snapshot taken", "machine", m.name, "snapshot", name, "memory", running, "took", time.Since(begun))
		return nil
	})
	return out, err
}

// Snapshots implements Machine: its snapshots, oldest first.
func (m *localMachine) Snapshots(ctx context.Context) ([]Snapshot, error) {
	var out []Snapshot
	err := m.locked(ctx, func(r record, st State) error {
		sn, disk, err := m.snapshotter(r)
		if errors.Is(err, ErrUnsupported) {
			return nil // no snapshots
		}
		if err != nil {
			return err
		}
		out, err = sn.Snapshots(ctx, m.ref(r), disk, hasDisk(st))
		return err
	})
	return out, err
}

// snapshotCall is one call on a snapshot: the machine's record, how the
// driver keeps its snapshots, and the snapshot itself.
type snapshotCall struct {
	r       record
	sn      driver.Snapshotter
	disk    string
	running bool // the hypervisor has the disk open
	snap    Snapshot
}

// onSnapshot runs fn under the machine's lock on its existing snapshot
// name, in a state that op allows (running, paused, powered off).
func (m *localMachine) onSnapshot(ctx context.Context, op, name string, fn func(c snapshotCall) error) error {
	if err := store.ValidateName("snapshot", name); err != nil {
		return apiError(err)
	}
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need(op, st, Running, Paused, PoweredOff, Aborted); err != nil {
			return err
		}
		c := snapshotCall{r: r, running: hasDisk(st)}
		var err error
		if c.sn, c.disk, err = m.snapshotter(r); err != nil {
			return err
		}
		snaps, err := c.sn.Snapshots(ctx, m.ref(r), c.disk, c.running)
		if err != nil {
			return fmt.Errorf("%s machine %s: %w", op, m.name, err)
		}
		i := slices.IndexFunc(snaps, func(s Snapshot) bool { return s.Tag == name })
		if i < 0 {
			return snapshotNotFound(m.name, name, snaps)
		}
		c.snap = snaps[i]
		return fn(c)
	})
}

// RestoreSnapshot implements Machine. A memory snapshot brings the machine
// back running as it was when taken (started from it when powered off); a
// disk snapshot reverts a powered-off machine's disk. What the machine
// wrote since is lost; the snapshot stays.
func (m *localMachine) RestoreSnapshot(ctx context.Context, name string) error {
	return m.onSnapshot(ctx, "restore a snapshot of", name, func(c snapshotCall) error {
		switch {
		case c.running && c.snap.MemorySize == 0:
			return fmt.Errorf("%w: snapshot %q of machine %s holds its disk only, which cannot change under a running guest: power it down first", ErrWrongState, name, m.name)
		case c.running:
			if err := c.sn.LoadSnapshot(ctx, m.ref(c.r), c.disk, name, true); err != nil {
				return fmt.Errorf("restore machine %s to %s: %w", m.name, name, err)
			}
		case c.snap.MemorySize == 0:
			return c.sn.LoadSnapshot(ctx, m.ref(c.r), c.disk, name, false)
		default:
			// Started from it: start sets the clock.
			return m.startFromSnapshot(ctx, c.r, name)
		}
		d, err := m.drv(c.r)
		if err != nil {
			return err
		}
		m.setClock(ctx, d, c.r)
		return nil
	})
}

// DeleteSnapshot implements Machine.
func (m *localMachine) DeleteSnapshot(ctx context.Context, name string) error {
	return m.onSnapshot(ctx, "delete a snapshot of", name, func(c snapshotCall) error {
		if err := c.sn.DeleteSnapshot(ctx, m.ref(c.r), c.disk, name, c.running); err != nil {
			return fmt.Errorf("delete snapshot %s of machine %s: %w", name, m.name, err)
		}
		return nil
	})
}

func snapshotNotFound(machine, name string, snaps []Snapshot) error {
	have := "none"
	if len(snaps) > 0 {
		tags := make([]string, len(snaps))
		for i, s := range snaps {
			tags[i] = s.Tag
		}
		have = fmt.Sprint(tags)
	}
	return fmt.Errorf("%w: snapshot %q of machine %s (it has: %s)", ErrNotFound, name, machine, have)
}
