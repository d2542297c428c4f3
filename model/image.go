package model

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// ImageModel is an installed base image: a read-only qcow2 disk and its
// metadata, stored as models/images/<id>/{disk.qcow2,model.json}. A model
// is private to the state directory's owner (the user QEMU runs as): its
// directory is 0700, its disk 0400 and model.json 0600, since a model may
// hold what its publisher or a guest put there.
type ImageModel struct {
	// ID names the model.
	ID string `json:"id"`
	// Spec is the image spec; its location is the model's disk.
	Spec spec.Image `json:"spec"`
	// Source is where the image was installed from.
	Source string `json:"source,omitempty"`
	// SHA256 is the digest of what was downloaded.
	SHA256 string `json:"sha256,omitempty"`
	// VirtualSize is the disk's size as the guest sees it, in bytes.
	VirtualSize int64 `json:"virtual-size,omitempty"`
	// SourceFormat is the disk format the image came in, as qemu-img
	// names it (qcow2, raw, vdi, vmdk, vpc for VHD, vhdx).
	SourceFormat string `json:"source-format,omitempty"`
	// Compression is how the source was compressed (none, gzip, xz,
	// zstd, bzip2).
	Compression string `json:"compression,omitempty"`
	// Container is the archive the disk came in: box (Vagrant), ova, tar,
	// or empty for a bare disk.
	Container string `json:"container,omitempty"`
	// Verified says SHA256 was checked against a published or given
	// digest.
	Verified bool `json:"verified,omitempty"`
	// Installed is when the model was installed.
	Installed time.Time `json:"installed"`
}

// Images is the image-model registry of one state directory.
type Images struct {
	dir string
}

// NewImages returns the registry of the state directory home.
func NewImages(home *store.Home) Images { return Images{dir: home.ImageModelsPath()} }

// Dir is the directory of the model id.
func (r Images) Dir(id string) string { return filepath.Join(r.dir, id) }

// Get reads the model id. Its spec's location is the absolute path of the
// model's disk and it is always immutable.
func (r Images) Get(id string) (ImageModel, error) {
	if err := store.ValidateName("image model", id); err != nil {
		return ImageModel{}, err
	}
	data, err := os.ReadFile(filepath.Join(r.Dir(id), store.ModelFile))
	if errors.Is(err, fs.ErrNotExist) {
		return ImageModel{}, fmt.Errorf("%w: image model %q", ErrNotFound, id)
	}
	if err != nil {
		return ImageModel{}, fmt.Errorf("image model %s: %w", id, err)
	}
	var m ImageModel
	if err := json.Unmarshal(data, &m); err != nil {
		return ImageModel{}, fmt.Errorf("image model %s: %s is corrupt: %w", id, filepath.Join(r.Dir(id), store.ModelFile), err)
	}
	m.ID = id
	m.Spec.Location = filepath.Join(r.Dir(id), store.ModelDiskFile)
	m.Spec.Immutable = true
	m.Spec.Format = spec.DiskFormatQCOW2 // Install converts every image to qcow2
	return m, nil
}

// The modes of an installed model's files: readable by the state
// directory's owner only.
const (
	modelDirMode  os.FileMode = 0o700
	modelDiskMode os.FileMode = 0o400
	modelFileMode os.FileMode = 0o600
)

// MakePrivate gives every installed model the modes Install gives (a 0700
// directory, a 0400 disk, a 0600 model.json) where they are looser, as
// models installed by older versions are (0755, 0444, 0644), and returns
// the paths it changed. It is idempotent and safe to run beside installs
// and removals.
func (r Images) MakePrivate() ([]string, error) {
	entries, err := os.ReadDir(r.dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image models: %w", err)
	}
	var fixed []string
	var errs []error
	for _, e := range entries {
		if !e.IsDir() || store.ValidateName("image model", e.Name()) != nil {
			continue // hidden work and removal directories are not models
		}
		dir := r.Dir(e.Name())
		for _, f := range []struct {
			path string
			mode os.FileMode
		}{
			{dir, modelDirMode},
			{filepath.Join(dir, store.ModelDiskFile), modelDiskMode},
			{filepath.Join(dir, store.ModelFile), modelFileMode},
		} {
			fi, err := os.Lstat(f.path)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if fi.Mode()&fs.ModeSymlink != 0 || fi.Mode().Perm()&^f.mode == 0 {
				continue // never follow a link; as strict or stricter already
			}
			if err := os.Chmod(f.path, f.mode); err != nil {
				errs = append(errs, err)
				continue
			}
			fixed = append(fixed, f.path)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fixed, fmt.Errorf("make image models private: %w", err)
	}
	return fixed, nil
}

// IDs lists the installed model ids in alphabetical order.
func (r Images) IDs() ([]string, error) {
	entries, err := os.ReadDir(r.dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image models: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && store.ValidateName("image model", e.Name()) == nil {
			if _, err := os.Stat(filepath.Join(r.dir, e.Name(), store.ModelFile)); err == nil {
				ids = append(ids, e.Name())
			}
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// Lock takes the registry's lock (flock on models/images), serialising
// installs and removals across goroutines and processes. ctx bounds the
// wait.
func (r Images) Lock(ctx context.Context) (*store.Lock, error) {
	return store.LockDir(ctx, r.dir)
}

// List reads every installed model. Models whose model.json cannot be read
// are returned in broken, keyed by id, so one bad model does not hide the
// others.
func (r Images) List() (models []ImageModel, broken map[string]error, err error) {
	ids, err := r.IDs()
	if err != nil {
		return nil, nil, err
	}
	for _, id := range ids {
		m, err := r.Get(id)
		if err != nil {
			if broken == nil {
				broken = map[string]error{}
			}
			broken[id] = err
			continue
		}
		models = append(models, m)
	}
	return models, broken, nil
}

// Install moves a staged directory holding a complete, verified disk
// (store.ModelDiskFile) into the registry as model m.ID: model.json is
// written into it, the disk made read-only and private (0400, model.json
// 0600, the directory 0700), and the directory renamed into place, so the
// model appears whole or not at all. An
// existing model of that id is an error wrapping ErrExists unless replace
// is true; then the two directories are exchanged atomically and the old
// one removed. The caller holds Lock and has checked that no machine uses
// a model it replaces.
func (r Images) Install(staged string, m ImageModel, replace bool) (ImageModel, error) {
	if err := store.ValidateName("image model", m.ID); err != nil {
		return ImageModel{}, err
	}
	disk := filepath.Join(staged, store.ModelDiskFile)
	if err := os.Chmod(staged, modelDirMode); err != nil {
		return ImageModel{}, fmt.Errorf("install image model %s: %w", m.ID, err)
	}
	if err := os.Chmod(disk, modelDiskMode); err != nil {
		return ImageModel{}, fmt.Errorf("install image model %s: %w", m.ID, err)
	}
	rec := m
	rec.Spec.Location = store.ModelDiskFile // relative to the model directory
	rec.Spec.Immutable = true
	rec.Spec.Format = spec.DiskFormatQCOW2
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return ImageModel{}, err
	}
	if err := store.WriteFileAtomic(filepath.Join(staged, store.ModelFile), append(data, '\n'), modelFileMode); err != nil {
		return ImageModel{}, fmt.Errorf("install image model %s: %w", m.ID, err)
	}
	if err := store.SyncDir(staged); err != nil {
		return ImageModel{}, fmt.Errorf("install image model %s: %w", m.ID, err)
	}
	final := r.Dir(m.ID)
	_, statErr := os.Lstat(final)
	switch {
	case statErr == nil && !replace:
		return ImageModel{}, fmt.Errorf("%w: image model %q is installed; remove it or replace it", ErrExists, m.ID)
	case statErr == nil:
		// Exchange the new directory with the old, then remove the old.
		if err := unix.Renameat2(unix.AT_FDCWD, staged, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE); err != nil {
			return ImageModel{}, fmt.Errorf("replace image model %s: %w", m.ID, err)
		}
		if err := os.RemoveAll(staged); err != nil { // now the old model
			return ImageModel{}, fmt.Errorf("replace image model %s: remove the old one: %w", m.ID, err)
		}
	default:
		// renameat2 with RENAME_NOREPLACE: of concurrent installs of one
		// id, exactly one wins.
		if err := unix.Renameat2(unix.AT_FDCWD, staged, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return ImageModel{}, fmt.Errorf("%w: image model %q is installed; remove it or replace it", ErrExists, m.ID)
			}
			return ImageModel{}, fmt.Errorf("install image model %s: %w", m.ID, err)
		}
	}
	if err := store.SyncDir(r.dir); err != nil {
		return ImageModel{}, err
	}
	return r.Get(m.ID)
}

// Remove deletes the model id: its directory is renamed to a hidden name
// first (so it disappears at once and whole), then removed; hidden
// leftovers of removals cut short by a crash go too. The caller holds Lock
// and has checked that no machine uses it.
func (r Images) Remove(id string) error {
	if err := store.ValidateName("image model", id); err != nil {
		return err
	}
	// What a removal interrupted by a crash left: the lock is held, so no
	// removal is running.
	if stale, _ := filepath.Glob(filepath.Join(r.dir, ".removing-*")); len(stale) > 0 {
		for _, d := range stale {
			os.RemoveAll(d)
		}
	}
	final := r.Dir(id)
	if _, err := os.Stat(filepath.Join(final, store.ModelFile)); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: image model %q", ErrNotFound, id)
	}
	var suffix [8]byte
	rand.Read(suffix[:])
	gone := filepath.Join(r.dir, ".removing-"+id+"-"+hex.EncodeToString(suffix[:]))
	if err := unix.Renameat2(unix.AT_FDCWD, final, unix.AT_FDCWD, gone, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("remove image model %s: %w", id, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("remove image model %s: %w", id, err)
	}
	return store.SyncDir(r.dir)
}

// Sweep removes what an install or removal cut short by a crash left in
// the registry's directory (hidden entries), and returns their paths. It
// does nothing while another process holds the registry's lock.
func (r Images) Sweep(fix bool) ([]string, error) {
	lk, ok, err := store.TryLockDir(r.dir)
	if err != nil || !ok {
		return nil, err
	}
	defer lk.Unlock()
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return nil, fmt.Errorf("sweep image models: %w", err)
	}
	var out []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(r.dir, e.Name())
		if fix {
			os.Chmod(p, 0o755) // a half-installed disk directory may be read-only
			if err := os.RemoveAll(p); err != nil {
				return out, fmt.Errorf("sweep %s: %w", p, err)
			}
		}
		out = append(out, p)
	}
	return out, nil
}
