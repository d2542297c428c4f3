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
	if fi, err := os.Stat(disk); err != nil || fi.Mode().Perm() != 0o444 {
		t.Errorf("disk = %v, %v; want read-only", fi, err)
	}
	if fi, err := os.Stat(r.Dir("deb")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("model directory = %v, %v", fi, err)
	}

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
