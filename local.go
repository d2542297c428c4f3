package vmfest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Config configures a Local server. The zero value is usable: state in
// ~/.vmfest, machines run by the QEMU driver, accelerator chosen
// automatically.
type Config struct {
	// Home is the state directory; default store.DefaultRoot().
	Home string
	// Driver runs new machines; default: the driver DriverName names.
	Driver driver.Driver
	// DriverName names the driver of new machines when Driver is nil:
	// qemu (the default) or libvirt. A machine is always run by the
	// driver its record names.
	DriverName string
	// Accel is kvm, tcg or auto (the default) for the QEMU and libvirt
	// drivers.
	Accel string
	// QEMU is the system emulator binary of the QEMU driver; default
	// qemu-system-x86_64.
	QEMU string
	// LibvirtURI is the libvirt driver's connection; default
	// qemu:///system.
	LibvirtURI string
	// QEMUImg is the qemu-img binary; default qemu-img.
	QEMUImg string
	// Logger receives warnings and progress; default slog.Default().
	Logger *slog.Logger
	// NAT is what a machine's nat-rules may bind on the host; the zero
	// value allows loopback addresses and ports from 1024 up only.
	NAT spec.NATPolicy
}

// ConfigFromEnv returns a Config read from VMFEST_HOME, VMFEST_DRIVER,
// VMFEST_ACCEL and VMFEST_LIBVIRT_URI.
func ConfigFromEnv() Config {
	return Config{
		Home:       store.DefaultRoot(),
		DriverName: os.Getenv("VMFEST_DRIVER"),
		Accel:      os.Getenv("VMFEST_ACCEL"),
		LibvirtURI: os.Getenv("VMFEST_LIBVIRT_URI"),
	}
}

// Local is the in-process Server over a state directory.
type Local struct {
	cfg      Config
	home     *store.Home
	hardware model.Hardware
	images   model.Images
	log      *slog.Logger
	drivers  *drivers // see drivers.go
	nets     netsOnce // see networks.go
	// scriptReidentify, set only by tests before any clone, names the
	// clones re-identified by reidentifyScript although their agent has
	// reidentifyCommand: that path, qemu-ga's, then runs in a real guest.
	scriptReidentify map[string]bool
	// holdLinks, set only by tests before any clone, names the clones
	// kept off their networks by holding their links down, as on a host
	// whose kernel cannot mute a tap (see muteClone).
	holdLinks map[string]bool
}

var _ Server = (*Local)(nil)

// NewLocal opens (and creates, if needed) the state directory and returns a
// server over it.
func NewLocal(cfg Config) (*Local, error) {
	if cfg.Home == "" {
		cfg.Home = store.DefaultRoot()
	}
	if cfg.QEMUImg == "" {
		cfg.QEMUImg = "qemu-img"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	drv, err := newDrivers(cfg)
	if err != nil {
		return nil, err
	}
	home, err := store.Open(cfg.Home)
	if err != nil {
		return nil, err
	}
	l := &Local{
		cfg:      cfg,
		home:     home,
		hardware: model.NewHardware(home),
		images:   model.NewImages(home),
		log:      cfg.Logger,
		drivers:  drv,
	}
	// A light sweep of what crashed operations left; `vmfest doctor` does
	// the full check.
	// Models installed by older versions were readable by every local user.
	if fixed, err := l.images.MakePrivate(); err != nil {
		l.log.Warn("could not make the image models private", "err", err)
	} else if len(fixed) > 0 {
		l.log.Info("made image models readable by this user only", "paths", len(fixed))
	}
	if found, err := l.sweepPartial(true); err != nil {
		l.log.Warn("sweep of the state directory failed", "err", err)
	} else if len(found) > 0 {
		l.log.Debug("swept leftovers of interrupted operations", "count", len(found))
	}
	return l, nil
}

// Home is the state directory's absolute path.
func (l *Local) Home() string { return l.home.Root() }

func (l *Local) machineNames() ([]string, error) {
	entries, err := os.ReadDir(l.home.MachinesPath())
	if err != nil {
		return nil, fmt.Errorf("list machines: %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// FindMachine implements Server.
func (l *Local) FindMachine(ctx context.Context, name string) (Machine, error) {
	if err := store.ValidateName("machine", name); err != nil {
		return nil, apiError(err)
	}
	if _, err := os.Stat(filepath.Join(l.home.MachinePath(name), store.MachineFile)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: machine %q", ErrNotFound, name)
		}
		return nil, fmt.Errorf("machine %s: %w", name, err)
	}
	return &localMachine{l: l, name: name}, nil
}

// Machines implements Server.
func (l *Local) Machines(ctx context.Context) ([]Machine, error) {
	names, err := l.machineNames()
	if err != nil {
		return nil, err
	}
	out := make([]Machine, len(names))
	for i, n := range names {
		out[i] = &localMachine{l: l, name: n}
	}
	return out, nil
}

// HardwareModels implements Server.
func (l *Local) HardwareModels(ctx context.Context) ([]string, error) { return l.hardware.Names() }

// HardwareModel implements Server.
func (l *Local) HardwareModel(ctx context.Context, name string) (spec.Hardware, error) {
	h, err := l.hardware.Get(name)
	return h, apiError(err)
}
