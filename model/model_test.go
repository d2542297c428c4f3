package model

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

func newHome(t *testing.T) *store.Home {
	t.Helper()
	h, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// staged makes a staging directory holding a disk with content.
func staged(t *testing.T, home *store.Home, content string) string {
	t.Helper()
	dir, err := os.MkdirTemp(home.Root(), ".work-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, store.ModelDiskFile), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func entries(t *testing.T, dir string) string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

func TestImagesInstallReplaceRemove(t *testing.T) {
	home := newHome(t)
	r := NewImages(home)
	lk, err := r.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Unlock()
	m := ImageModel{ID: "deb", Spec: spec.Image{OSFamily: "debian"}, SHA256: "aa", Installed: time.Now().UTC()}
	got, err := r.Install(staged(t, home, "one"), m, false)
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(r.Dir("deb"), store.ModelDiskFile)
	if got.Spec.Location != disk || !got.Spec.Immutable || got.Spec.OSFamily != "debian" || got.SHA256 != "aa" {
		t.Errorf("installed = %+v", got)
	}
	if got.Spec.Format != spec.DiskFormatQCOW2 {
		t.Errorf("installed model's format = %q, want qcow2", got.Spec.Format)
	}
	checkPrivate(t, r, "deb")

	second := staged(t, home, "two")
	if _, err := r.Install(second, m, false); !errors.Is(err, ErrExists) {
		t.Errorf("install over an existing id: %v", err)
	}
	if data, _ := os.ReadFile(disk); string(data) != "one" {
		t.Errorf("a refused install changed the model: %q", data)
	}
	m.SHA256 = "bb"
	if got, err = r.Install(second, m, true); err != nil || got.SHA256 != "bb" {
		t.Fatalf("replace: %+v, %v", got, err)
	}
	if data, _ := os.ReadFile(disk); string(data) != "two" {
		t.Errorf("after replace the disk holds %q", data)
	}
	checkPrivate(t, r, "deb")
	if _, err := os.Stat(second); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old model was not removed: %v", err)
	}

	// A broken model.json does not hide the others.
	os.MkdirAll(r.Dir("broken"), 0o755)
	os.WriteFile(filepath.Join(r.Dir("broken"), store.ModelFile), []byte("{"), 0o644)
	models, broken, err := r.List()
	if err != nil || len(models) != 1 || models[0].ID != "deb" || broken["broken"] == nil {
		t.Errorf("List = %+v, %v, %v", models, broken, err)
	}

	os.MkdirAll(filepath.Join(home.ImageModelsPath(), ".removing-old-1", "x"), 0o755) // a crash's leftover
	if err := r.Remove("deb"); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove("deb"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	if got := entries(t, home.ImageModelsPath()); got != "broken" {
		t.Errorf("models/images holds %q", got)
	}
	if _, err := r.Install(staged(t, home, "x"), ImageModel{ID: "../x"}, false); err == nil {
		t.Error("installed a bad id")
	}
}

// checkPrivate checks that model id is readable only by its owner: a 0700
// directory, a read-only 0400 disk and a 0600 model.json.
func checkPrivate(t *testing.T, r Images, id string) {
	t.Helper()
	for _, c := range []struct {
		path string
		mode os.FileMode
	}{
		{r.Dir(id), 0o700},
		{filepath.Join(r.Dir(id), store.ModelDiskFile), 0o400},
		{filepath.Join(r.Dir(id), store.ModelFile), 0o600},
	} {
		if fi, err := os.Stat(c.path); err != nil || fi.Mode().Perm() != c.mode {
			t.Errorf("%s: %v, %v; want mode %v", c.path, fi.Mode(), err, c.mode)
		}
	}
}

// TestImagesMakePrivate checks that models installed by an older vmfest
// (0755 directory, 0444 disk, 0644 model.json: every local user could read
// them) are made private, once, and that a model.json saying another
// format still reads as qcow2.
func TestImagesMakePrivate(t *testing.T) {
	home := newHome(t)
	r := NewImages(home)
	for _, id := range []string{"old", "older"} {
		dir := r.Dir(id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, store.ModelDiskFile), []byte("disk"), 0o444)
		os.WriteFile(filepath.Join(dir, store.ModelFile), []byte(`{"id":"`+id+`","spec":{"location":"disk.qcow2","format":"raw"},"installed":"2026-01-01T00:00:00Z"}`), 0o644)
		os.Chmod(dir, 0o755)
	}
	os.MkdirAll(filepath.Join(home.ImageModelsPath(), ".work-x"), 0o755) // not a model: left alone
	fixed, err := r.MakePrivate()
	if err != nil {
		t.Fatal(err)
	}
	if len(fixed) != 6 {
		t.Errorf("fixed %d paths, want 6: %v", len(fixed), fixed)
	}
	for _, id := range []string{"old", "older"} {
		checkPrivate(t, r, id)
		m, err := r.Get(id)
		if err != nil || m.Spec.Format != spec.DiskFormatQCOW2 {
			t.Errorf("model %s = %+v, %v; want format qcow2", id, m.Spec, err)
		}
	}
	if fixed, err := r.MakePrivate(); err != nil || len(fixed) != 0 {
		t.Errorf("second pass fixed %v, %v", fixed, err)
	}
	if fi, _ := os.Stat(filepath.Join(home.ImageModelsPath(), ".work-x")); fi.Mode().Perm() != 0o755 {
		t.Errorf("a hidden directory was changed: %v", fi.Mode())
	}
}

func TestHardwareAddRemove(t *testing.T) {
	home := newHome(t)
	c := NewHardware(home)
	if err := c.Add("tiny", spec.Hardware{MemorySize: 128}, false); err != nil {
		t.Fatal(err)
	}
	if h, err := c.Get("tiny"); err != nil || h.MemorySize != 128 || h.CPUCount != spec.DefaultCPUCount {
		t.Errorf("tiny = %+v, %v", h, err)
	}
	if err := c.Add("tiny", spec.Hardware{MemorySize: 256}, false); !errors.Is(err, ErrExists) {
		t.Errorf("add twice: %v", err)
	}
	if err := c.Add("tiny", spec.Hardware{MemorySize: 256}, true); err != nil {
		t.Errorf("replace: %v", err)
	}
	if err := c.Add("bad", spec.Hardware{CPUCount: -1}, false); err == nil || !strings.Contains(err.Error(), "cpu-count") {
		t.Errorf("invalid spec: %v", err)
	}
	// A user model may shadow a built-in one; removing it brings the built-in back.
	if err := c.Add("micro", spec.Hardware{MemorySize: 64}, false); err != nil {
		t.Fatal(err)
	}
	if h, _ := c.Get("micro"); h.MemorySize != 64 {
		t.Errorf("shadowed micro = %d MiB", h.MemorySize)
	}
	if err := c.Remove("micro"); err != nil {
		t.Fatal(err)
	}
	if h, _ := c.Get("micro"); h.MemorySize != 512 {
		t.Errorf("micro after rm = %d MiB", h.MemorySize)
	}
	if err := c.Remove("micro"); !errors.Is(err, ErrBuiltin) {
		t.Errorf("remove built-in: %v", err)
	}
	if err := c.Remove("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("remove unknown: %v", err)
	}
	if got := entries(t, home.HardwareModelsPath()); got != "tiny.yaml" {
		t.Errorf("models/hardware holds %q", got)
	}
}
