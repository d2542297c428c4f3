package fake

import (
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
)

var _ driver.HotPlugger = (*Driver)(nil)

// PlugDrive implements driver.HotPlugger: the drive joins what the running
// machine was started with (see Started), on the terms QEMU's hot-plug has.
func (d *Driver) PlugDrive(ctx context.Context, dm driver.Machine, ctlIndex int, bus, kind string, dr driver.Drive) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("PlugDrive"); err != nil {
		return err
	}
	m := d.get(dm.Dir)
	if m.state != driver.Running && m.state != driver.Paused {
		return fmt.Errorf("fake: hot-plug into a %s machine", m.state)
	}
	if kind == spec.DeviceHardDisk && bus != spec.BusVirtio {
		return fmt.Errorf("%w: fake: a disk hot-plugs on virtio only, not %s", driver.ErrUnsupported, bus)
	}
	if _, ok := m.spec.Drive(dr.Controller, dr.Slot); ok {
		return fmt.Errorf("fake: slot %s %d is in use", dr.Controller, dr.Slot)
	}
	if _, err := os.Stat(dr.Disk.Path); err != nil {
		return fmt.Errorf("fake: open %s: %w", dr.Disk.Path, err)
	}
	m.spec.Drives = append(slices.Clone(m.spec.Drives), dr)
	return nil
}

// UnplugDrive implements driver.HotPlugger.
func (d *Driver) UnplugDrive(ctx context.Context, dm driver.Machine, ctlIndex int, bus, kind string, dr driver.Drive) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("UnplugDrive"); err != nil {
		return err
	}
	m := d.get(dm.Dir)
	if kind == spec.DeviceHardDisk && bus != spec.BusVirtio {
		return fmt.Errorf("%w: fake: a disk hot-unplugs from virtio only, not %s", driver.ErrUnsupported, bus)
	}
	if _, ok := m.spec.Drive(dr.Controller, dr.Slot); !ok {
		return fmt.Errorf("fake: nothing in slot %s %d", dr.Controller, dr.Slot)
	}
	m.spec.Drives = slices.DeleteFunc(slices.Clone(m.spec.Drives), func(x driver.Drive) bool {
		return x.Controller == dr.Controller && x.Slot == dr.Slot
	})
	return nil
}
