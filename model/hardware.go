// Package model holds vmfest's named specs: the hardware catalogue (built-in
// sizes plus the user's YAML files) and the image-model registry (installed,
// immutable base images with their metadata).
package model

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Errors callers can test for with errors.Is.
var (
	// ErrNotFound is wrapped by errors about models that do not exist.
	ErrNotFound = errors.New("no such model")
	// ErrExists is wrapped by errors about a model name already taken.
	ErrExists = errors.New("already exists")
	// ErrBuiltin is wrapped by errors about changing a built-in model.
	ErrBuiltin = errors.New("built-in hardware model")
)

// Hardware is the hardware catalogue: the built-in models and the YAML files
// under models/hardware/ (a user file named like a built-in replaces it).
type Hardware struct {
	dir string
}

// NewHardware returns the catalogue of the state directory home.
func NewHardware(home *store.Home) Hardware { return Hardware{dir: home.HardwareModelsPath()} }

// Get returns the named hardware model with defaults applied.
func (c Hardware) Get(name string) (spec.Hardware, error) {
	if err := store.ValidateName("hardware model", name); err != nil {
		return spec.Hardware{}, err
	}
	for _, ext := range []string{".yaml", ".yml", ".json"} {
		data, err := os.ReadFile(filepath.Join(c.dir, name+ext))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return spec.Hardware{}, fmt.Errorf("hardware model %s: %w", name, err)
		}
		h, err := spec.ParseHardware(data)
		if err != nil {
			return spec.Hardware{}, fmt.Errorf("hardware model %s (%s): %w", name, filepath.Join(c.dir, name+ext), err)
		}
		return h.WithDefaults(), nil
	}
	if h, ok := spec.BuiltinHardware()[name]; ok {
		return h, nil
	}
	names, _ := c.Names()
	return spec.Hardware{}, fmt.Errorf("%w: hardware model %q; known: %s", ErrNotFound, name, strings.Join(names, ", "))
}

// Names lists the model names, built-in ones first (smallest first), then
// the user's in alphabetical order.
func (c Hardware) Names() ([]string, error) {
	names := spec.BuiltinHardwareNames()
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
	}
	entries, err := os.ReadDir(c.dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return names, fmt.Errorf("hardware models: %w", err)
	}
	var user []string
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if ext != ".yaml" && ext != ".yml" && ext != ".json" {
			continue
		}
		n := strings.TrimSuffix(e.Name(), ext)
		if store.ValidateName("hardware model", n) != nil || seen[n] {
			continue
		}
		seen[n] = true
		user = append(user, n)
	}
	sort.Strings(user)
	return append(names, user...), nil
}

// Add validates h (defaults applied, then Validate) and saves it as the
// user model name, written atomically as models/hardware/<name>.yaml. A
// user model named like a built-in one replaces it for this state
// directory; an existing user model is an error wrapping ErrExists unless
// replace is true.
func (c Hardware) Add(name string, h spec.Hardware, replace bool) error {
	if err := store.ValidateName("hardware model", name); err != nil {
		return err
	}
	if err := h.WithDefaults().Validate(); err != nil {
		return fmt.Errorf("hardware model %s: %w", name, err)
	}
	if !replace {
		if file := c.userFile(name); file != "" {
			return fmt.Errorf("%w: hardware model %q is already defined by %s", ErrExists, name, file)
		}
	}
	data, err := spec.MarshalYAML(h)
	if err != nil {
		return fmt.Errorf("hardware model %s: %w", name, err)
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("hardware model %s: %w", name, err)
	}
	for _, ext := range []string{".yml", ".json"} { // one file per model
		os.Remove(filepath.Join(c.dir, name+ext))
	}
	return store.WriteFileAtomic(filepath.Join(c.dir, name+".yaml"), data, 0o644)
}

// Remove deletes the user model name. Built-in models cannot be removed
// (a user file shadowing one can: the built-in comes back).
func (c Hardware) Remove(name string) error {
	if err := store.ValidateName("hardware model", name); err != nil {
		return err
	}
	file := c.userFile(name)
	if file == "" {
		if _, ok := spec.BuiltinHardware()[name]; ok {
			return fmt.Errorf("%w: %q cannot be removed", ErrBuiltin, name)
		}
		return fmt.Errorf("%w: hardware model %q", ErrNotFound, name)
	}
	if err := os.Remove(file); err != nil {
		return fmt.Errorf("remove hardware model %s: %w", name, err)
	}
	return store.SyncDir(c.dir)
}

// userFile is the user's file defining name, or "".
func (c Hardware) userFile(name string) string {
	for _, ext := range []string{".yaml", ".yml", ".json"} {
		p := filepath.Join(c.dir, name+ext)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}
