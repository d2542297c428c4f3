package vmfest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/image"
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

// record is machine.json: what a machine is made of. Its run state is never
// stored here; it is derived from QEMU on each read.
type record struct {
	Name          string        `json:"name"`
	Created       time.Time     `json:"created"`
	ImageModel    string        `json:"image-model,omitempty"`
	Image         spec.Image    `json:"image"`
	HardwareModel string        `json:"hardware-model,omitempty"`
	Hardware      spec.Hardware `json:"hardware"`
	// Overlay is true when the disk is disk.qcow2 in the machine directory,
	// backed by Image.Location; else the disk is Image.Location itself.
	Overlay bool `json:"overlay"`
	// DiskFormat is the format of the disk QEMU opens: qcow2 for an
	// overlay, else Image.Location's format. Like BaseFormat it is decided
	// once, when the machine is created, and given to QEMU on every start:
	// what a guest later writes at the start of its disk decides nothing.
	DiskFormat string `json:"disk-format"`
	// BaseFormat is Image.Location's format when Overlay. Records written
	// before it existed have none; see baseFormat.
	BaseFormat string `json:"base-format,omitempty"`
	// Driver names the driver that runs the machine, chosen when it is
	// created; empty in records of an older vmfest: qemu.
	Driver string `json:"driver,omitempty"`
	// Accel is the accelerator of the last start.
	Accel string `json:"accel,omitempty"`
	// Net is the machine's networking: instance id, network allocations,
	// SSH forwards (see networks.go).
	Net netRecord `json:"net"`
}

func (r record) disk(dir string) string {
	if r.Overlay {
		return filepath.Join(dir, store.DiskFile)
	}
	return r.Image.Location
}

// baseFormat is the recorded format of an overlay's base.
func (r record) baseFormat(dir string) (string, error) {
	switch {
	case r.BaseFormat != "":
		return r.BaseFormat, nil
	case r.ImageModel != "":
		return spec.DiskFormatQCOW2, nil
	}
	// A record of an older vmfest: the format vmfest itself wrote into the
	// overlay's header when it made it (never the base's own bytes).
	f, err := overlayBackingFormat(filepath.Join(dir, store.DiskFile))
	if err != nil {
		return "", fmt.Errorf("the format of its base image %s is not recorded: %w", r.Image.Location, err)
	}
	return f, nil
}

// driverDisk is the disk as the driver opens it: every format given, the
// chain spelled out.
func (r record) driverDisk(dir string) (driver.Disk, error) {
	if !r.Overlay {
		return driver.Disk{Path: r.Image.Location, Format: r.DiskFormat}, nil
	}
	bf, err := r.baseFormat(dir)
	if err != nil {
		return driver.Disk{}, err
	}
	return driver.Disk{Path: r.disk(dir), Format: spec.DiskFormatQCOW2, BackingPath: r.Image.Location, BackingFormat: bf}, nil
}

func (l *Local) readRecord(name string) (record, error) {
	path := filepath.Join(l.home.MachinePath(name), store.MachineFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return record{}, fmt.Errorf("%w: machine %q", ErrNotFound, name)
	}
	if err != nil {
		return record{}, fmt.Errorf("machine %s: %w", name, err)
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return record{}, fmt.Errorf("machine %s: %s is corrupt: %w", name, path, err)
	}
	return r, nil
}

func writeRecord(dir string, r record) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return store.WriteFileAtomic(filepath.Join(dir, store.MachineFile), append(data, '\n'), 0o644)
}

// Instance implements Server.
func (l *Local) Instance(ctx context.Context, name string, image Image, hardware Hardware) (Machine, error) {
	return l.instance(ctx, name, image, hardware, nil)
}

// instance is Instance; at, when set (by crash tests), is called at each
// named point where a crash leaves a distinct state.
func (l *Local) instance(ctx context.Context, name string, image Image, hardware Hardware, at func(point string)) (Machine, error) {
	point := func(p string) {
		if at != nil {
			at(p)
		}
	}
	if err := store.ValidateName("machine", name); err != nil {
		return nil, apiError(err)
	}
	// The shared lock on machines/ tells a sweep (which needs it
	// exclusively) that work is in progress, and keeps a model from being
	// removed (which also needs it exclusively) between resolving it and
	// backing the overlay by it.
	busy, err := store.LockDirShared(ctx, l.home.MachinesPath())
	if err != nil {
		return nil, fmt.Errorf("create machine %s: %w", name, err)
	}
	defer busy.Unlock()
	r := record{Name: name, Created: time.Now().UTC(), Driver: l.drivers.dflt.Info().Name}
	if err := l.resolveImage(&r, image); err != nil {
		return nil, err
	}
	if err := l.resolveHardware(&r, hardware); err != nil {
		return nil, err
	}
	final := l.home.MachinePath(name)
	if _, err := os.Stat(final); err == nil {
		return nil, fmt.Errorf("%w: machine %q", ErrExists, name)
	}
	if r.ImageModel == "" {
		// A file of the caller's: decide how it is used and its format, and
		// create the machine, before any other creation or destroy looks
		// at the file's users.
		claim, err := l.lockDisks(ctx)
		if err != nil {
			return nil, fmt.Errorf("create machine %s: %w", name, err)
		}
		defer claim.Unlock()
		if err := l.claimDisk(&r); err != nil {
			return nil, err
		}
	}

	// Build the machine in a temporary directory and rename it into place,
	// so a crash never leaves half a machine.
	tmp, err := os.MkdirTemp(l.home.MachinesPath(), ".creating-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("create machine %s: %w", name, err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	point("create:mkdir")
	if err := l.allocateNetworks(ctx, &r, image.SSHKeys); err != nil {
		return nil, fmt.Errorf("create machine %s: %w", name, err)
	}
	point("create:allocated")
	defer func() {
		if !done {
			l.releaseNetworks(ctx, r)
		}
	}()
	if r.Overlay {
		if err := l.createOverlay(ctx, r.Image.Location, r.BaseFormat, filepath.Join(tmp, store.DiskFile)); err != nil {
			return nil, fmt.Errorf("create machine %s: %w", name, err)
		}
		point("create:overlay")
	}
	if err := writeRecord(tmp, r); err != nil {
		return nil, fmt.Errorf("create machine %s: %w", name, err)
	}
	point("create:record")
	if err := os.Rename(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, errNotEmpty) {
			return nil, fmt.Errorf("%w: machine %q", ErrExists, name)
		}
		return nil, fmt.Errorf("create machine %s: %w", name, err)
	}
	done = true
	point("create:renamed")
	if err := store.SyncDir(l.home.MachinesPath()); err != nil {
		l.log.Warn("sync machines directory", "err", err)
	}
	l.log.Debug("machine created", "machine", name, "image", r.Image.Location, "overlay", r.Overlay)
	return &localMachine{l: l, name: name}, nil
}

func (l *Local) resolveImage(r *record, image Image) error {
	switch {
	case image.Model != "" && image.Spec != nil:
		return fmt.Errorf("%w: image: give a model or a spec, not both", ErrInvalid)
	case image.Model != "":
		m, err := l.images.Get(image.Model)
		if errors.Is(err, model.ErrNotFound) {
			ids, _ := l.images.IDs()
			known := strings.Join(ids, ", ")
			if known == "" {
				known = "none installed"
			}
			return fmt.Errorf("%w: image model %q (installed: %s)", ErrNotFound, image.Model, known)
		}
		if err != nil {
			return err
		}
		r.ImageModel = m.ID
		r.Image = m.Spec
	case image.Spec != nil:
		r.Image = *image.Spec
	default:
		return fmt.Errorf("%w: image: give a model or a spec", ErrInvalid)
	}
	if err := r.Image.Validate(); err != nil {
		return apiError(fmt.Errorf("image spec: %w", err))
	}
	loc, err := filepath.Abs(r.Image.Location)
	if err != nil {
		return fmt.Errorf("image location %s: %w", r.Image.Location, err)
	}
	r.Image.Location = loc
	r.Overlay = r.Image.Immutable
	if r.ImageModel != "" {
		// Installed models are qcow2 by construction and were checked when
		// installed.
		r.DiskFormat, r.BaseFormat = spec.DiskFormatQCOW2, spec.DiskFormatQCOW2
		return nil
	}
	r.Image.Location, err = l.checkLocation(loc, r.Image.Immutable)
	return err
}

// checkLocation checks where a spec's disk is and returns its real path
// (symbolic links resolved, so the file's users are found whatever path
// names it): a regular file, not a file of a machine, and an installed
// model's disk only as immutable.
func (l *Local) checkLocation(loc string, immutable bool) (string, error) {
	real, err := filepath.EvalSymlinks(loc)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: image location %s: no such file", ErrInvalid, loc)
	}
	if err != nil {
		return "", fmt.Errorf("image location %s: %w", loc, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("image location %s: %w", loc, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%w: image location %s: not a regular file", ErrInvalid, loc)
	}
	if within(real, l.home.MachinesPath()) {
		return "", fmt.Errorf("%w: image location %s: a file in vmfest's machines directory (%s) belongs to its machine; give an image outside it", ErrInvalid, loc, l.home.MachinesPath())
	}
	if !immutable && within(real, l.home.ImageModelsPath()) {
		return "", fmt.Errorf("%w: image location %s: an installed model's disk is immutable; give immutable: true, or use the model by its id", ErrInvalid, loc)
	}
	return real, nil
}

// within says whether path is inside dir (both compared with symbolic links
// resolved).
func within(path, dir string) bool {
	if d, err := filepath.EvalSymlinks(dir); err == nil {
		dir = d
	}
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// lockDisks takes the lock that serialises claims on disk files given by
// spec (the state directory's own lock): deciding how a file may be used
// and its format up to the rename of the machine that uses it into place,
// and deciding whether a destroyed machine's mutable disk may be deleted.
// Take it after machines/ (shared) and a machine's own lock, never before.
func (l *Local) lockDisks(ctx context.Context) (*store.Lock, error) {
	return store.LockDir(ctx, l.home.Root())
}

// diskUse is one machine's use of a file.
type diskUse struct {
	machine string
	mutable bool   // the machine writes it: its mutable disk, or its overlay
	format  string // as that machine recorded it; empty if unknown
}

// diskUses lists the machines that use the file at path, as their mutable
// disk, their overlay or their immutable base, whether their records name it
// by this path or by another (a hard link). A record that cannot be read is
// skipped: Doctor reports it.
func (l *Local) diskUses(path string) ([]diskUse, error) {
	target, _ := os.Stat(path)
	same := func(p string) bool {
		if p == path {
			return true
		}
		if target == nil {
			return false
		}
		st, err := os.Stat(p)
		return err == nil && os.SameFile(st, target)
	}
	names, err := l.machineNames()
	if err != nil {
		return nil, err
	}
	var uses []diskUse
	for _, n := range names {
		r, err := l.readRecord(n)
		if err != nil {
			l.log.Debug("machine record unreadable; its disk is not counted", "machine", n, "err", err)
			continue
		}
		dir := l.home.MachinePath(n)
		switch {
		case !r.Overlay && same(r.Image.Location):
			uses = append(uses, diskUse{machine: n, mutable: true, format: r.DiskFormat})
		case r.Overlay && same(r.Image.Location):
			f, _ := r.baseFormat(dir)
			uses = append(uses, diskUse{machine: n, format: f})
		case r.Overlay && same(r.disk(dir)):
			uses = append(uses, diskUse{machine: n, mutable: true, format: spec.DiskFormatQCOW2})
		}
	}
	return uses, nil
}

// removeMutableDisk deletes the mutable disk of the destroyed machine name
// (its directory already moved away) unless another machine uses the file;
// then it keeps the file and says so in the log.
func (l *Local) removeMutableDisk(ctx context.Context, name, path string) error {
	claim, err := l.lockDisks(ctx)
	if err != nil {
		return fmt.Errorf("remove its disk %s: %w", path, err)
	}
	defer claim.Unlock()
	uses, err := l.diskUses(path)
	if err != nil {
		return fmt.Errorf("remove its disk %s: %w", path, err)
	}
	if len(uses) > 0 {
		users := make([]string, len(uses))
		for i, u := range uses {
			users[i] = u.machine
		}
		l.log.Warn("kept the destroyed machine's disk: other machines use it", "machine", name, "disk", path, "used-by", strings.Join(users, ", "))
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove its disk %s: %w", path, err)
	}
	return nil
}

// claimDisk decides, under lockDisks, whether the spec's file may be the
// new machine's disk (a file one machine writes is no other machine's disk;
// a file machines share as an immutable base is no machine's mutable disk),
// decides its format once (the spec's format key, else the format machines
// already recorded for it, else its content on this first use), and checks
// its content.
func (l *Local) claimDisk(r *record) error {
	loc := r.Image.Location
	uses, err := l.diskUses(loc)
	if err != nil {
		return err
	}
	var bases []string
	recorded, recordedBy := "", ""
	for _, u := range uses {
		if u.mutable {
			return fmt.Errorf("%w: image %s is the mutable disk of machine %q: no other machine may use it while that machine exists", ErrExists, loc, u.machine)
		}
		bases = append(bases, u.machine)
		if recorded == "" && u.format != "" {
			recorded, recordedBy = u.format, u.machine
		}
	}
	if !r.Image.Immutable && len(bases) > 0 {
		return fmt.Errorf("%w: image %s is the immutable base of machine %s: it cannot become a machine's mutable disk; use it as immutable", ErrExists, loc, strings.Join(bases, ", "))
	}
	format := r.Image.Format
	switch {
	case format != "" && recorded != "" && format != recorded:
		return fmt.Errorf("%w: image %s: format %s given, but machine %s uses the file as %s; give format %s or none", ErrInvalid, loc, format, recordedBy, recorded, recorded)
	case format == "" && recorded != "":
		format = recorded
	}
	// format "" (the file's first use, no format given): decided from its
	// content, here and only here.
	if format, err = checkDisk(loc, format); err != nil {
		return err
	}
	r.Image.Format = format
	if r.Overlay {
		r.DiskFormat, r.BaseFormat = spec.DiskFormatQCOW2, format
	} else {
		r.DiskFormat = format
	}
	return nil
}

func (l *Local) resolveHardware(r *record, hw Hardware) error {
	var base spec.Hardware
	switch {
	case hw.Model != "" && hw.Spec != nil:
		return fmt.Errorf("%w: hardware: give a model or a spec, not both", ErrInvalid)
	case hw.Model != "":
		h, err := l.hardware.Get(hw.Model)
		if err != nil {
			return apiError(err)
		}
		r.HardwareModel = hw.Model
		base = h
	case hw.Spec != nil:
		base = *hw.Spec
	default:
		return fmt.Errorf("%w: hardware: give a model or a spec", ErrInvalid)
	}
	h := spec.Merge(base, r.Image.Hardware).WithDefaults()
	for i := range h.Network {
		if h.Network[i].MACAddress == "" {
			h.Network[i].MACAddress = randomMAC()
		}
	}
	if err := h.ValidateWith(l.cfg.NAT); err != nil {
		return apiError(fmt.Errorf("hardware spec: %w", err))
	}
	if total, err := hostMemory("MemTotal"); err != nil {
		l.log.Warn("host memory unknown; memory-size not checked against it", "err", err)
	} else if h.MemorySize > total {
		return apiError(fmt.Errorf("hardware spec: %w", &spec.ValidationError{Problems: []spec.FieldError{{
			Field:   "memory-size",
			Problem: fmt.Sprintf("%d MiB is more than the host's %d MiB (MemTotal)", h.MemorySize, total),
		}}}))
	}
	r.Hardware = h
	return nil
}

// hostMemory reads a field of /proc/meminfo (MemTotal, MemAvailable), in
// MiB.
func hostMemory(field string) (int, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		var kib int
		if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kib); err != nil {
			return 0, fmt.Errorf("/proc/meminfo %s: %q: %w", field, rest, err)
		}
		return kib / 1024, nil
	}
	return 0, fmt.Errorf("/proc/meminfo has no %s", field)
}

// randomMAC returns a MAC in QEMU's locally administered 52:54:00 range.
func randomMAC() string {
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}

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

// checkDisk checks by content a disk that is not an installed model, as
// the given format ("" decides it from the content), and returns its
// format: a qcow2 or raw disk that refers to no other file (backing file,
// data file). A refusal wraps ErrInvalid and names the image's location.
func checkDisk(loc, format string) (string, error) {
	in, err := image.CheckMachineDisk(loc, format)
	switch {
	case errors.Is(err, image.ErrNotSelfContained), errors.Is(err, image.ErrCorrupt), errors.Is(err, image.ErrNotDiskImage):
		return "", fmt.Errorf("%w: image location %s: %w", ErrInvalid, loc, err)
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("%w: image location %s: no such file", ErrInvalid, loc)
	case err != nil:
		return "", fmt.Errorf("image location %s: %w", loc, err)
	}
	return in.Format, nil
}
