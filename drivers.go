package vmfest

import (
	"fmt"
	"sync"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/libvirt"
	"github.com/vmfest/vmfest/driver/qemu"
)

// drivers holds a Local's drivers: the one that runs new machines, and the
// others machine records name, made on first use from the same Config.
// This file is the one place the package names driver implementations.
type drivers struct {
	cfg  Config
	dflt driver.Driver

	mu     sync.Mutex
	byName map[string]driver.Driver
}

func newDrivers(cfg Config) (*drivers, error) {
	d := &drivers{cfg: cfg, byName: map[string]driver.Driver{}}
	dflt := cfg.Driver
	if dflt == nil {
		var err error
		if dflt, err = d.make(cfg.DriverName); err != nil {
			return nil, err
		}
	}
	d.dflt = dflt
	d.byName[dflt.Info().Name] = dflt
	return d, nil
}

// make builds the named driver from the Config.
func (d *drivers) make(name string) (driver.Driver, error) {
	switch name {
	case "", "qemu":
		q, err := qemu.New(qemu.Options{Binary: d.cfg.QEMU, Accel: d.cfg.Accel, Logger: d.cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("%w: VMFEST_ACCEL: %w", ErrInvalid, err)
		}
		return q, nil
	case "libvirt":
		lv, err := libvirt.New(libvirt.Options{URI: d.cfg.LibvirtURI, Accel: d.cfg.Accel, Logger: d.cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("%w: driver libvirt: %w", ErrInvalid, err)
		}
		return lv, nil
	}
	return nil, fmt.Errorf("%w: driver %q (--driver, VMFEST_DRIVER): allowed: qemu, libvirt", ErrInvalid, name)
}

// get returns the named driver ("" is a record of an older vmfest: qemu).
func (d *drivers) get(name string) (driver.Driver, error) {
	if name == "" {
		name = "qemu"
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if drv, ok := d.byName[name]; ok {
		return drv, nil
	}
	drv, err := d.make(name)
	if err != nil {
		return nil, fmt.Errorf("the %s driver cannot be used on this server: %w", name, err)
	}
	d.byName[name] = drv
	return drv, nil
}

// driverNamed returns the driver a machine record names.
func (l *Local) driverNamed(name string) (driver.Driver, error) { return l.drivers.get(name) }

// driverName is the name of the driver a record names.
func (l *Local) driverName(name string) string {
	if name == "" {
		return "qemu"
	}
	return name
}

// Driver describes the driver that runs the server's new machines.
func (l *Local) Driver() driver.Info { return l.drivers.dflt.Info() }
