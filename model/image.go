package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// ImageModel is an installed base image: a read-only qcow2 disk and its
// metadata, stored as models/images/<id>/{disk.qcow2,model.json}.
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
	// SourceFormat is the disk format the image came in.
	SourceFormat string `json:"source-format,omitempty"`
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
	return m, nil
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
