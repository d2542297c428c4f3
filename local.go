package vmfest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Config configures a Local server. The zero value is usable: state in
// ~/.vmfest, accelerator chosen automatically.
type Config struct {
	// Home is the state directory; default store.DefaultRoot().
	Home string
	// Accel is kvm, tcg or auto (the default): see qemu.ChooseAccel.
	Accel string
	// QEMU is the system emulator binary; default qemu-system-x86_64.
	QEMU string
	// QEMUImg is the qemu-img binary; default qemu-img.
	QEMUImg string
	// Logger receives warnings and progress; default slog.Default().
	Logger *slog.Logger
	// NAT is what a machine's nat-rules may bind on the host; the zero
	// value allows loopback addresses and ports from 1024 up only.
	NAT spec.NATPolicy
}

// ConfigFromEnv returns a Config read from VMFEST_HOME and VMFEST_ACCEL.
func ConfigFromEnv() Config {
	return Config{Home: store.DefaultRoot(), Accel: os.Getenv("VMFEST_ACCEL")}
}

// Local is the in-process Server over a state directory.
type Local struct {
	cfg      Config
	home     *store.Home
	hardware model.Hardware
	images   model.Images
	log      *slog.Logger
	// crashAt, when set (by crash tests), is called at each named point of
	// Instance and Destroy where a crash leaves a distinct state.
	crashAt func(point string)
}

var _ Server = (*Local)(nil)

// NewLocal opens (and creates, if needed) the state directory and returns a
// server over it.
func NewLocal(cfg Config) (*Local, error) {
	if cfg.Home == "" {
		cfg.Home = store.DefaultRoot()
	}
	if _, _, err := qemu.ChooseAccel(cfg.Accel, qemu.DefaultHost()); err != nil {
		return nil, fmt.Errorf("%w: VMFEST_ACCEL: %w", ErrInvalid, err)
	}
	if cfg.QEMUImg == "" {
		cfg.QEMUImg = "qemu-img"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
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
	}
	// A light sweep of what crashed operations left; `vmfest doctor` does
	// the full check.
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
	Overlay    bool   `json:"overlay"`
	DiskFormat string `json:"disk-format"`
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
	if err := store.ValidateName("machine", name); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
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
	r := record{Name: name, Created: time.Now().UTC()}
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
	if !r.Overlay {
		if other, err := l.userOf(ctx, r.Image.Location); err != nil {
			return nil, err
		} else if other != "" {
			return nil, fmt.Errorf("%w: image %s is not immutable and machine %q already uses it; make it immutable to share it", ErrExists, r.Image.Location, other)
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
	l.point("create:mkdir")
	if err := l.allocateNetworks(ctx, &r, image.SSHKeys); err != nil {
		return nil, fmt.Errorf("create machine %s: %w", name, err)
	}
	l.point("create:allocated")
	defer func() {
		if !done {
			l.releaseNetworks(ctx, r)
		}
	}()
	if r.Overlay {
		if err := l.createOverlay(ctx, r.Image.Location, r.DiskFormat, filepath.Join(tmp, store.DiskFile)); err != nil {
			return nil, fmt.Errorf("create machine %s: %w", name, err)
		}
		r.DiskFormat = "qcow2"
		l.point("create:overlay")
	}
	if err := writeRecord(tmp, r); err != nil {
		return nil, fmt.Errorf("create machine %s: %w", name, err)
	}
	l.point("create:record")
	if err := os.Rename(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, errNotEmpty) {
			return nil, fmt.Errorf("%w: machine %q", ErrExists, name)
		}
		return nil, fmt.Errorf("create machine %s: %w", name, err)
	}
	done = true
	l.point("create:renamed")
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
		return fmt.Errorf("image spec: %w", err)
	}
	loc, err := filepath.Abs(r.Image.Location)
	if err != nil {
		return fmt.Errorf("image location %s: %w", r.Image.Location, err)
	}
	r.Image.Location = loc
	format, err := diskFormat(loc)
	if err != nil {
		return err
	}
	r.DiskFormat = format
	r.Overlay = r.Image.Immutable
	return nil
}

func (l *Local) resolveHardware(r *record, hw Hardware) error {
	var base spec.Hardware
	switch {
	case hw.Model != "" && hw.Spec != nil:
		return fmt.Errorf("%w: hardware: give a model or a spec, not both", ErrInvalid)
	case hw.Model != "":
		h, err := l.hardware.Get(hw.Model)
		if errors.Is(err, model.ErrNotFound) {
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		if err != nil {
			return err
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
		return fmt.Errorf("hardware spec: %w", err)
	}
	r.Hardware = h
	return nil
}

// randomMAC returns a MAC in QEMU's locally administered 52:54:00 range.
func randomMAC() string {
	var b [3]byte
	rand.Read(b[:])
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}

// userOf returns the machine whose disk is the file at path, if any.
func (l *Local) userOf(ctx context.Context, path string) (string, error) {
	names, err := l.machineNames()
	if err != nil {
		return "", err
	}
	for _, n := range names {
		r, err := l.readRecord(n)
		if err != nil {
			continue
		}
		if r.disk(l.home.MachinePath(n)) == path || (r.Overlay && r.Image.Location == path) {
			return n, nil
		}
	}
	return "", nil
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
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
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
	if errors.Is(err, model.ErrNotFound) {
		return spec.Hardware{}, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return h, err
}

// diskFormat tells qcow2 from raw by the file's magic.
func diskFormat(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: image location %s: no such file", ErrInvalid, path)
		}
		return "", fmt.Errorf("image location %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("image location %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%w: image location %s: not a regular file", ErrInvalid, path)
	}
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		return "", fmt.Errorf("%w: image location %s: too short to be a disk image", ErrInvalid, path)
	}
	if string(magic[:]) == "QFI\xfb" {
		return "qcow2", nil
	}
	return "raw", nil
}

// point marks a named crash point (see crashAt).
func (l *Local) point(name string) {
	if l.crashAt != nil {
		l.crashAt(name)
	}
}
