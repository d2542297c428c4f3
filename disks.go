package vmfest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmfest/vmfest/image"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

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
	// at is the storage slot that holds the file, for a volume, a disk or
	// an ISO in a slot other than the boot mount point.
	at *spec.MountPoint
}

// diskUses lists the machines that use the file at path, as their mutable
// disk, their overlay, their immutable base or a file in another storage
// slot (a volume, a disk, an ISO), whether their records name it by this
// path or by another (a hard link). A record that cannot be read is
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
		for _, pm := range r.media() {
			if same(l.mediaPath(pm.dev)) {
				at := pm.at
				uses = append(uses, diskUse{machine: n, mutable: pm.dev.DeviceType == spec.DeviceHardDisk, format: l.driveOf(pm).Disk.Format, at: &at})
			}
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
