package vmfest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vmfest/vmfest/disk"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// VolumeSpec describes a volume to create.
type VolumeSpec struct {
	// Name is the volume's name (as machine names are written).
	Name string `json:"name"`
	// Size is its virtual size: 512M, 20G, 1T or bytes.
	Size spec.Size `json:"size"`
	// Labels are the volume's key=value labels, as a machine's are
	// written; a system server records the creator in api.OwnerLabel.
	Labels map[string]string `json:"labels,omitempty"`
}

// Volume is a named disk that outlives the machines it is attached to: a
// qcow2 file in the state directory that a machine's hard-disk slot holds
// by name. Destroying a machine never deletes a volume; a volume attached
// to a machine cannot be removed.
type Volume struct {
	Name    string    `json:"name"`
	Size    spec.Size `json:"size"`
	Format  string    `json:"format"`
	Created time.Time `json:"created"`
	// Path is the volume's disk file on the server.
	Path string `json:"path"`
	// Allocated is how many bytes the file takes on the host's disk.
	Allocated int64 `json:"allocated"`
	// Machine is the machine it is attached to, "" when it is free; Slot
	// is where.
	Machine string           `json:"machine,omitempty"`
	Slot    *spec.MountPoint `json:"slot,omitempty"`
	// Labels are those it was created with.
	Labels map[string]string `json:"labels,omitempty"`
}

// volumeRecord is volume.json.
type volumeRecord struct {
	Name    string            `json:"name"`
	Size    spec.Size         `json:"size"`
	Format  string            `json:"format"`
	Created time.Time         `json:"created"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// MaxVolumeSize is the largest volume vmfest creates.
const MaxVolumeSize = spec.MaxDiskSize

// CreateVolume implements Server. The volume is made in a hidden
// directory and renamed into place, so a crash leaves all of it or none.
func (l *Local) CreateVolume(ctx context.Context, s VolumeSpec) (Volume, error) {
	return l.createVolume(ctx, s, nil)
}

// createVolume is CreateVolume; at, when set (by crash tests), is called
// at each named point where a crash leaves a distinct state.
func (l *Local) createVolume(ctx context.Context, s VolumeSpec, at func(point string)) (Volume, error) {
	point := func(p string) {
		if at != nil {
			at(p)
		}
	}
	if err := store.ValidateName("volume", s.Name); err != nil {
		return Volume{}, apiError(err)
	}
	if s.Size < 1<<20 || s.Size > MaxVolumeSize || s.Size%512 != 0 {
		return Volume{}, fmt.Errorf("%w: volume %s: size %s: give a whole number of 512-byte sectors from 1M to %s (512M, 20G, 1T)", ErrInvalid, s.Name, s.Size, MaxVolumeSize)
	}
	if err := CheckLabels(s.Labels); err != nil {
		return Volume{}, fmt.Errorf("volume %s: %w", s.Name, err)
	}
	final := l.home.VolumePath(s.Name)
	if _, err := os.Stat(final); err == nil {
		return Volume{}, fmt.Errorf("%w: volume %q", ErrExists, s.Name)
	}
	if err := os.MkdirAll(l.home.VolumesPath(), 0o755); err != nil {
		return Volume{}, fmt.Errorf("create volume %s: %w", s.Name, err)
	}
	// The shared lock on volumes/ tells a sweep (which needs it
	// exclusively) that a hidden directory of ours is in use.
	busy, err := store.LockDirShared(ctx, l.home.VolumesPath())
	if err != nil {
		return Volume{}, fmt.Errorf("create volume %s: %w", s.Name, err)
	}
	defer busy.Unlock()
	tmp, err := os.MkdirTemp(l.home.VolumesPath(), ".creating-"+s.Name+"-")
	if err != nil {
		return Volume{}, fmt.Errorf("create volume %s: %w", s.Name, err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	point("volume-create:mkdir")
	if err := disk.New(l.cfg.QEMUImg).CreateBlank(ctx, filepath.Join(tmp, store.VolumeDiskFile), int64(s.Size)); err != nil {
		return Volume{}, fmt.Errorf("create volume %s: %w", s.Name, err)
	}
	point("volume-create:disk")
	vr := volumeRecord{Name: s.Name, Size: s.Size, Format: spec.DiskFormatQCOW2, Created: time.Now().UTC(), Labels: s.Labels}
	data, err := json.MarshalIndent(vr, "", "  ")
	if err != nil {
		return Volume{}, err
	}
	if err := store.WriteFileAtomic(filepath.Join(tmp, store.VolumeFile), append(data, '\n'), 0o644); err != nil {
		return Volume{}, fmt.Errorf("create volume %s: %w", s.Name, err)
	}
	point("volume-create:record")
	if err := os.Rename(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, errNotEmpty) {
			return Volume{}, fmt.Errorf("%w: volume %q", ErrExists, s.Name)
		}
		return Volume{}, fmt.Errorf("create volume %s: %w", s.Name, err)
	}
	done = true
	point("volume-create:renamed")
	if err := store.SyncDir(l.home.VolumesPath()); err != nil {
		l.log.Warn("sync volumes directory", "err", err)
	}
	l.log.Debug("volume created", "volume", s.Name, "size", s.Size)
	return l.volumeInfo(vr, nil), nil
}

func (l *Local) readVolume(name string) (volumeRecord, error) {
	if err := store.ValidateName("volume", name); err != nil {
		return volumeRecord{}, apiError(err)
	}
	data, err := os.ReadFile(filepath.Join(l.home.VolumePath(name), store.VolumeFile))
	if errors.Is(err, fs.ErrNotExist) {
		return volumeRecord{}, fmt.Errorf("%w: volume %q (vmfest volume create %s --size 10G makes one)", ErrNotFound, name, name)
	}
	if err != nil {
		return volumeRecord{}, fmt.Errorf("volume %s: %w", name, err)
	}
	var vr volumeRecord
	if err := json.Unmarshal(data, &vr); err != nil {
		return volumeRecord{}, fmt.Errorf("volume %s: %s is corrupt: %w", name, store.VolumeFile, err)
	}
	return vr, nil
}

// volumeInfo is the Volume of vr; users maps volume names to where they
// are attached (nil: look it up).
func (l *Local) volumeInfo(vr volumeRecord, users map[string]mediaUse) Volume {
	v := Volume{Name: vr.Name, Size: vr.Size, Format: vr.Format, Created: vr.Created, Path: l.home.VolumeDisk(vr.Name), Labels: vr.Labels}
	if st, err := os.Stat(v.Path); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			v.Allocated = sys.Blocks * 512
		}
	}
	if users == nil {
		users = l.volumeUsers()
	}
	if u, ok := users[vr.Name]; ok {
		slot := u.slot
		v.Machine, v.Slot = u.machine, &slot
	}
	return v
}

// mediaUse is where a machine's slot holds a volume.
type mediaUse struct {
	machine string
	slot    spec.MountPoint
}

// volumeUsers maps each attached volume to its machine and slot. A record
// that cannot be read is skipped: Doctor reports it.
func (l *Local) volumeUsers() map[string]mediaUse {
	users := map[string]mediaUse{}
	names, _ := l.machineNames()
	for _, n := range names {
		r, err := l.readRecord(n)
		if err != nil {
			continue
		}
		for _, d := range r.media() {
			if d.dev.Volume != "" {
				users[d.dev.Volume] = mediaUse{machine: n, slot: d.at}
			}
		}
	}
	return users
}

// Volumes implements Server: every volume, sorted by name.
func (l *Local) Volumes(ctx context.Context) ([]Volume, error) {
	entries, err := os.ReadDir(l.home.VolumesPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	users := l.volumeUsers()
	var out []Volume
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		vr, err := l.readVolume(e.Name())
		if err != nil {
			l.log.Warn("volume unreadable; not listed", "volume", e.Name(), "err", err)
			continue
		}
		out = append(out, l.volumeInfo(vr, users))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Volume implements Server.
func (l *Local) Volume(ctx context.Context, name string) (Volume, error) {
	vr, err := l.readVolume(name)
	if err != nil {
		return Volume{}, err
	}
	return l.volumeInfo(vr, nil), nil
}

// RemoveVolume implements Server: the volume and its data are deleted. It
// is refused (ErrWrongState) while a machine's slot holds it.
func (l *Local) RemoveVolume(ctx context.Context, name string) error {
	return l.removeVolume(ctx, name, nil)
}

// removeVolume is RemoveVolume; at, when set (by crash tests), is called
// at each named point where a crash leaves a distinct state.
func (l *Local) removeVolume(ctx context.Context, name string, at func(point string)) error {
	if _, err := l.readVolume(name); err != nil {
		return err
	}
	claim, err := l.lockDisks(ctx)
	if err != nil {
		return fmt.Errorf("remove volume %s: %w", name, err)
	}
	defer claim.Unlock()
	busy, err := store.LockDirShared(ctx, l.home.VolumesPath()) // as in createVolume
	if err != nil {
		return fmt.Errorf("remove volume %s: %w", name, err)
	}
	defer busy.Unlock()
	if u, ok := l.volumeUsers()[name]; ok {
		return fmt.Errorf("%w: volume %q is attached to machine %q at %s; detach it (vmfest detach %s %s) or destroy the machine first", ErrWrongState, name, u.machine, u.slot, u.machine, name)
	}
	// Renamed aside first: the name is free at once, and a crash leaves a
	// hidden directory Doctor removes.
	gone := filepath.Join(l.home.VolumesPath(), fmt.Sprintf(".removing-%s-%d", name, time.Now().UnixNano()))
	if err := os.Rename(l.home.VolumePath(name), gone); err != nil {
		return fmt.Errorf("remove volume %s: %w", name, err)
	}
	if at != nil {
		at("volume-remove:moved")
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("remove volume %s: %w", name, err)
	}
	if at != nil {
		at("volume-remove:removed")
	}
	store.SyncDir(l.home.VolumesPath())
	l.log.Debug("volume removed", "volume", name)
	return nil
}
