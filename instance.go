package vmfest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmfest/vmfest/cloudinit"
	"github.com/vmfest/vmfest/disk"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Instance implements Server.
func (l *Local) Instance(ctx context.Context, name string, image Image, hardware Hardware, opts ...InstanceOption) (Machine, error) {
	return l.instance(ctx, name, image, hardware, instanceOpts(opts), nil)
}

// instance is Instance; at, when set (by crash tests), is called at each
// named point where a crash leaves a distinct state.
func (l *Local) instance(ctx context.Context, name string, image Image, hardware Hardware, o instanceOptions, at func(point string)) (Machine, error) {
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
	r := record{Name: name, Created: time.Now().UTC(), Driver: l.drivers.dflt.Info().Name, GenID: newGenID()}
	if o.driver != "" {
		d, err := l.drivers.get(o.driver)
		if err != nil {
			return nil, fmt.Errorf("create machine %s: %w", name, err)
		}
		r.Driver = d.Info().Name
	}
	if err := l.resolveImage(&r, image); err != nil {
		return nil, err
	}
	if err := l.resolveHardware(&r, hardware); err != nil {
		return nil, err
	}
	for _, a := range o.attach {
		if err := a.check(); err != nil {
			return nil, err
		}
		if _, err := place(&r.Hardware, a); err != nil {
			return nil, err
		}
	}
	if len(o.attach) > 0 {
		if err := l.checkHardware(r.Hardware, r.Overlay); err != nil {
			return nil, err
		}
	}
	if err := CheckLabels(o.labels); err != nil {
		return nil, err
	}
	if len(o.labels) > 0 {
		r.Labels = o.labels
	}
	if o.userData != nil {
		if !r.Image.CloudInit {
			return nil, fmt.Errorf("%w: user-data: the image %s has no cloud-init (cloud-init: false in its metadata), so nothing in the guest would read it", ErrInvalid, r.Image.Location)
		}
		if _, err := cloudinit.CheckUserData(o.userData); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		r.UserData = true
	}
	final := l.home.MachinePath(name)
	if _, err := os.Stat(final); err == nil {
		return nil, fmt.Errorf("%w: machine %q", ErrExists, name)
	}
	if r.ImageModel == "" || len(r.media()) > 0 {
		// Files of the caller's (the image, volumes, disks and ISOs in
		// slots): decide how each is used and its format, and create the
		// machine, before any other creation or destroy looks at the
		// files' users.
		claim, err := l.lockDisks(ctx)
		if err != nil {
			return nil, fmt.Errorf("create machine %s: %w", name, err)
		}
		defer claim.Unlock()
		if r.ImageModel == "" {
			if err := l.claimDisk(&r); err != nil {
				return nil, err
			}
		}
		if err := l.claimMedia(&r, nil); err != nil {
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
		if err := l.createOverlay(ctx, r.Image.Location, r.BaseFormat, filepath.Join(tmp, store.DiskFile), int64(r.Hardware.DiskSize)); err != nil {
			if errors.Is(err, disk.ErrTooSmall) {
				return nil, diskSizeError(r.Hardware.DiskSize, "is smaller than the image; a disk only grows (leave disk-size out for the image's size)")
			}
			return nil, fmt.Errorf("create machine %s: %w", name, err)
		}
		point("create:overlay")
	}
	if r.UserData {
		if err := store.WriteFileAtomic(filepath.Join(tmp, store.UserDataFile), o.userData, 0o600); err != nil {
			return nil, fmt.Errorf("create machine %s: %w", name, err)
		}
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
	if err := l.checkHardware(h, r.Overlay); err != nil {
		return err
	}
	r.Hardware = h
	return nil
}

// checkHardware validates a resolved hardware spec for a machine (with an
// overlay or not): the spec's own rules, the operator's NAT policy, the
// host's memory, and a disk-size only where there is an overlay to grow.
func (l *Local) checkHardware(h spec.Hardware, overlay bool) error {
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
	if h.DiskSize != 0 && !overlay {
		return diskSizeError(h.DiskSize, "cannot be given: the image is not immutable, so the machine's disk is the file itself, which vmfest does not resize")
	}
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

// diskSizeError is a refused disk-size, naming the field.
func diskSizeError(size spec.Size, problem string) error {
	return apiError(fmt.Errorf("hardware spec: %w", &spec.ValidationError{Problems: []spec.FieldError{{
		Field: "disk-size", Problem: fmt.Sprintf("%s %s", size, problem),
	}}}))
}
