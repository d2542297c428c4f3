package vmfest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmfest/vmfest/image"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// AddHardwareModel implements Server. The spec is validated with defaults
// applied and saved (as given, without the defaults) to
// models/hardware/<name>.yaml atomically. A user model of that name is an
// error wrapping ErrExists; one named like a built-in shadows it.
func (l *Local) AddHardwareModel(ctx context.Context, name string, h spec.Hardware) error {
	err := l.hardware.Add(name, h, false)
	if errors.Is(err, model.ErrExists) {
		err = fmt.Errorf("%w; remove it first with `vmfest hardware rm %s`", err, name)
	}
	return apiError(err)
}

// RemoveHardwareModel implements Server. Built-in models cannot be removed
// (the error wraps ErrInvalid). Machines keep the hardware they were made
// with, so removing a model in use is allowed.
func (l *Local) RemoveHardwareModel(ctx context.Context, name string) error {
	return apiError(l.hardware.Remove(name))
}

// cacheDir is where partial downloads and staging directories live: under
// the state directory, so installing is a rename.
func (l *Local) cacheDir() string { return filepath.Join(l.home.Root(), store.CacheDir) }

// SetupModel implements Server. Two setups of the same source, in this
// process or another, run one after the other (a lock in cache/): the
// second finds the model the first installed and returns it without
// downloading again. Progress reports come from the calling goroutine.
func (l *Local) SetupModel(ctx context.Context, source string, opts SetupOptions) (model.ImageModel, error) {
	src, err := image.ParseSource(source)
	if err != nil {
		return model.ImageModel{}, tagged{err, ErrInvalid}
	}
	id, err := image.ModelID(src, opts.ID)
	if err != nil {
		return model.ImageModel{}, tagged{err, ErrInvalid}
	}
	if opts.SHA256 != "" {
		if _, err := image.NormalizeSHA256(opts.SHA256); err != nil {
			return model.ImageModel{}, tagged{err, ErrInvalid}
		}
	}
	begun := time.Now().UTC()

	lock, err := image.LockSource(ctx, l.cacheDir(), src)
	if err != nil {
		return model.ImageModel{}, fmt.Errorf("setup-model %s: %w", id, err)
	}
	defer lock.Unlock()
	if m, err := l.images.Get(id); err == nil {
		if !opts.Replace && m.Source == src.String() && !m.Installed.Before(begun) {
			// A concurrent setup of the same source installed it while we
			// waited for the lock.
			return m, nil
		}
		if err := l.replaceable(ctx, id, opts.Replace); err != nil {
			return model.ImageModel{}, err
		}
	}

	progress := func(p image.Progress) {
		if opts.Progress != nil {
			opts.Progress(Progress{Phase: p.Phase, Done: p.Done, Total: p.Total})
		}
	}
	cfg := image.Config{CacheDir: l.cacheDir(), QEMUImg: l.cfg.QEMUImg, Logger: l.log}
	staged, err := image.Prepare(ctx, cfg, lock, src, image.Options{
		SHA256: opts.SHA256, Meta: opts.Meta, Overrides: opts.Overrides, Progress: progress,
		Policy: opts.FetchPolicy,
	})
	if err != nil {
		return model.ImageModel{}, fmt.Errorf("setup-model %s: %w", id, err)
	}
	defer staged.Cleanup()

	progress(image.Progress{Phase: image.PhaseInstall})
	reg, err := l.images.Lock(ctx)
	if err != nil {
		return model.ImageModel{}, fmt.Errorf("setup-model %s: %w", id, err)
	}
	defer reg.Unlock()
	// Machines may have been made from the old model meanwhile: check again
	// with creations held off.
	busy, err := store.LockDir(ctx, l.home.MachinesPath())
	if err != nil {
		return model.ImageModel{}, fmt.Errorf("setup-model %s: %w", id, err)
	}
	defer busy.Unlock()
	if _, err := l.images.Get(id); err == nil {
		if err := l.replaceable(ctx, id, opts.Replace); err != nil {
			return model.ImageModel{}, err
		}
	}
	m, err := l.images.Install(staged.Dir, model.ImageModel{
		ID:           id,
		Spec:         staged.Meta,
		Source:       staged.Source,
		SHA256:       staged.SHA256,
		Verified:     staged.Verified,
		VirtualSize:  staged.VirtualSize,
		SourceFormat: staged.Format,
		Compression:  staged.Compression,
		Container:    staged.Container,
		Installed:    time.Now().UTC(),
	}, opts.Replace)
	if errors.Is(err, model.ErrExists) {
		return model.ImageModel{}, tagged{err, ErrExists}
	}
	if err != nil {
		return model.ImageModel{}, fmt.Errorf("setup-model %s: %w", id, err)
	}
	l.log.Debug("image model installed", "model", id, "source", m.Source, "format", m.SourceFormat, "compression", m.Compression)
	return m, nil
}

// replaceable says whether the installed model id may be replaced.
func (l *Local) replaceable(ctx context.Context, id string, replace bool) error {
	if !replace {
		return fmt.Errorf("%w: image model %q is already installed; give another --id, or --replace it", ErrExists, id)
	}
	users, err := l.modelUsers(id)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("%w: image model %q cannot be replaced: machines %s use it; destroy them first", ErrWrongState, id, strings.Join(users, ", "))
	}
	return nil
}

// modelUsers lists the machines whose disk is backed by the model id.
func (l *Local) modelUsers(id string) ([]string, error) {
	disk := filepath.Join(l.images.Dir(id), store.ModelDiskFile)
	names, err := l.machineNames()
	if err != nil {
		return nil, err
	}
	var users []string
	for _, n := range names {
		r, err := l.readRecord(n)
		if err != nil {
			// A machine we cannot read may use it: refuse rather than guess.
			users = append(users, n+" (unreadable)")
			continue
		}
		if r.ImageModel == id || r.Image.Location == disk {
			users = append(users, n)
		}
	}
	return users, nil
}

// Models implements Server. A model whose model.json cannot be read is
// left out with a warning in the log.
func (l *Local) Models(ctx context.Context) ([]model.ImageModel, error) {
	models, broken, err := l.images.List()
	if err != nil {
		return nil, err
	}
	for id, err := range broken {
		l.log.Warn("image model unreadable", "model", id, "err", err)
	}
	if models == nil {
		models = []model.ImageModel{}
	}
	return models, nil
}

// Model implements Server.
func (l *Local) Model(ctx context.Context, id string) (model.ImageModel, error) {
	m, err := l.images.Get(id)
	return m, apiError(err)
}

// RemoveModel implements Server. It is refused (ErrWrongState) while any
// machine's disk is backed by the model, and the error names them.
func (l *Local) RemoveModel(ctx context.Context, id string) error {
	if err := store.ValidateName("image model", id); err != nil {
		return apiError(err)
	}
	reg, err := l.images.Lock(ctx)
	if err != nil {
		return fmt.Errorf("remove image model %s: %w", id, err)
	}
	defer reg.Unlock()
	busy, err := store.LockDir(ctx, l.home.MachinesPath())
	if err != nil {
		return fmt.Errorf("remove image model %s: %w", id, err)
	}
	defer busy.Unlock()
	if _, err := l.images.Get(id); err != nil {
		return apiError(err)
	}
	users, err := l.modelUsers(id)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return fmt.Errorf("%w: image model %q is in use by machines %s; destroy them first", ErrWrongState, id, strings.Join(users, ", "))
	}
	return apiError(l.images.Remove(id))
}
