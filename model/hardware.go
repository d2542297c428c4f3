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

// ErrNotFound is wrapped by errors about models that do not exist.
var ErrNotFound = errors.New("no such model")

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
