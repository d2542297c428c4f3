package fake

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/vmfest/vmfest/driver"
)

var _ driver.Snapshotter = (*Driver)(nil)

// snapshot is a fake snapshot: the disk's, with the guest's boot number
// when it holds memory.
type snapshot struct {
	driver.Snapshot
	boot int
}

func (d *Driver) snapshot(disk, tag string) (snapshot, bool) {
	i := slices.IndexFunc(d.snaps[disk], func(s snapshot) bool { return s.Tag == tag })
	if i < 0 {
		return snapshot{}, false
	}
	return d.snaps[disk][i], true
}

// checkRunning refuses what the hypervisor (or qemu-img) would: a
// snapshot operation that names a run state the machine is not in.
func (d *Driver) checkRunning(m *machine, running bool) error {
	live := m.state == driver.Running || m.state == driver.Paused
	if live != running {
		return fmt.Errorf("fake: snapshot operation with running=%v on a %s machine", running, m.state)
	}
	return nil
}

// Snapshots implements driver.Snapshotter.
func (d *Driver) Snapshots(ctx context.Context, dm driver.Machine, disk string, running bool) ([]driver.Snapshot, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("Snapshots"); err != nil {
		return nil, err
	}
	var out []driver.Snapshot
	for _, s := range d.snaps[disk] {
		out = append(out, s.Snapshot)
	}
	return out, nil
}

// SaveSnapshot implements driver.Snapshotter.
func (d *Driver) SaveSnapshot(ctx context.Context, dm driver.Machine, disk, tag string, running bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("SaveSnapshot"); err != nil {
		return err
	}
	m := d.get(dm.Dir)
	if err := d.checkRunning(m, running); err != nil {
		return err
	}
	if _, ok := d.snapshot(disk, tag); ok {
		return fmt.Errorf("fake: snapshot %s exists in %s", tag, disk)
	}
	s := snapshot{Snapshot: driver.Snapshot{Tag: tag, Created: time.Now().UTC()}}
	if running {
		s.MemorySize, s.VMClock, s.boot = 1<<20, time.Since(m.since), m.boot
	}
	d.snaps[disk] = append(d.snaps[disk], s)
	return nil
}

// LoadSnapshot implements driver.Snapshotter.
func (d *Driver) LoadSnapshot(ctx context.Context, dm driver.Machine, disk, tag string, running bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("LoadSnapshot"); err != nil {
		return err
	}
	m := d.get(dm.Dir)
	if err := d.checkRunning(m, running); err != nil {
		return err
	}
	s, ok := d.snapshot(disk, tag)
	switch {
	case !ok:
		return fmt.Errorf("fake: no snapshot %s in %s", tag, disk)
	case running && s.MemorySize == 0:
		return fmt.Errorf("fake: snapshot %s holds no memory", tag)
	case running:
		m.boot = s.boot
		d.setLocked(m, driver.Running)
	}
	return nil
}

// DeleteSnapshot implements driver.Snapshotter.
func (d *Driver) DeleteSnapshot(ctx context.Context, dm driver.Machine, disk, tag string, running bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("DeleteSnapshot"); err != nil {
		return err
	}
	if err := d.checkRunning(d.get(dm.Dir), running); err != nil {
		return err
	}
	if _, ok := d.snapshot(disk, tag); !ok {
		return fmt.Errorf("fake: no snapshot %s in %s", tag, disk)
	}
	d.snaps[disk] = slices.DeleteFunc(d.snaps[disk], func(s snapshot) bool { return s.Tag == tag })
	return nil
}
