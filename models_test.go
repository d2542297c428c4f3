package vmfest

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfest/vmfest/image"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// published serves files by name as a web server publishing images would
// (Range honoured), counting GETs per name.
type published struct {
	mu    sync.Mutex
	files map[string][]byte
	gets  map[string]*atomic.Int32
}

func publish(t *testing.T, files map[string][]byte) (*published, string) {
	t.Helper()
	p := &published{files: files, gets: map[string]*atomic.Int32{}}
	for n := range files {
		p.gets[n] = new(atomic.Int32)
	}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return p, srv.URL
}

func (p *published) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/")
	p.mu.Lock()
	data, ok := p.files[name]
	p.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	p.gets[name].Add(1)
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(data))
}

// smallDisk is a 2 MiB raw disk, gzipped, with its sha256.
func smallDisk(t *testing.T) (raw, gz []byte) {
	t.Helper()
	raw = make([]byte, 2<<20)
	copy(raw[1<<20:], bytes.Repeat([]byte("vmfest"), 1000))
	raw[510], raw[511] = 0x55, 0xaa
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(raw)
	zw.Close()
	return raw, buf.Bytes()
}

func sha256Line(data []byte, name string) []byte {
	return []byte(fmt.Sprintf("%x  %s\n", sha256.Sum256(data), name))
}

// registryState lists models/images and cache/, to check that a failure
// left nothing behind.
func registryState(t *testing.T, l *Local) string {
	t.Helper()
	var names []string
	for _, d := range []string{l.home.ImageModelsPath(), l.cacheDir()} {
		entries, err := os.ReadDir(d)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range entries {
			names = append(names, filepath.Join(filepath.Base(d), e.Name()))
		}
	}
	return strings.Join(names, " ")
}

func TestSetupModelLifecycle(t *testing.T) {
	l := newTestServer(t)
	ctx := ctxTimeout(t, 2*time.Minute)
	raw, _ := smallDisk(t)
	// A VirtualBox VDI, gzipped, as VMFest published its images.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "d.raw"), raw, 0o644)
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "vdi", filepath.Join(dir, "d.raw"), filepath.Join(dir, "d.vdi")).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	vdi, err := os.ReadFile(filepath.Join(dir, "d.vdi"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(vdi)
	zw.Close()
	gz := buf.Bytes()
	edn := []byte(`{:os-type-id "Debian_64" :os-family :debian :os-version "6.0.2.1" :os-64-bit true
 :username "vmfest" :password "vmfest" :no-sudo false :sudo-password "vmfest"
 :description "Debian 6.0.2.1 64bit"}`)
	srv, base := publish(t, map[string][]byte{
		"debian-6.0.2.1-64bit-v0.3.vdi.gz":        gz,
		"debian-6.0.2.1-64bit-v0.3.meta":          edn,
		"debian-6.0.2.1-64bit-v0.3.vdi.gz.sha256": sha256Line(gz, "debian-6.0.2.1-64bit-v0.3.vdi.gz"),
	})
	url := base + "/debian-6.0.2.1-64bit-v0.3.vdi.gz"

	var phases []string
	m, err := l.SetupModel(ctx, url, SetupOptions{Progress: func(p Progress) {
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	const id = "debian-6.0.2.1-64bit-v0.3"
	if m.ID != id || m.Source != url || !m.Verified || m.SHA256 != fmt.Sprintf("%x", sha256.Sum256(gz)) ||
		m.SourceFormat != "vdi" || m.Compression != "gzip" || m.VirtualSize != 2<<20 || m.Installed.IsZero() {
		t.Errorf("model = %+v", m)
	}
	want := spec.Image{Location: filepath.Join(l.images.Dir(id), store.ModelDiskFile), Immutable: true,
		OSFamily: "debian", OSVersion: "6.0.2.1", OS64Bit: true, Username: "vmfest", Password: "vmfest", Description: "Debian 6.0.2.1 64bit", Format: spec.DiskFormatQCOW2}
	if fmt.Sprintf("%+v", m.Spec) != fmt.Sprintf("%+v", want) {
		t.Errorf("spec = %+v\nwant %+v", m.Spec, want)
	}
	if strings.Join(phases, ",") != "download,convert,verify,install" {
		t.Errorf("progress phases = %v", phases)
	}
	if fi, err := os.Stat(m.Spec.Location); err != nil || fi.Mode().Perm() != 0o400 {
		t.Errorf("model disk: %v, %v; want read-only, private", fi, err)
	}
	if got := registryState(t, l); got != "images/"+id {
		t.Errorf("state after install: %s", got)
	}
	models, err := l.Models(ctx)
	if err != nil || len(models) != 1 || models[0].ID != id {
		t.Errorf("Models = %+v, %v", models, err)
	}
	if got, err := l.Model(ctx, id); err != nil || got.SHA256 != m.SHA256 {
		t.Errorf("Model = %+v, %v", got, err)
	}
	if _, err := l.Model(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Model(nope) = %v", err)
	}

	// Installing it again is refused before any download.
	gets := srv.gets["debian-6.0.2.1-64bit-v0.3.vdi.gz"].Load()
	if _, err := l.SetupModel(ctx, url, SetupOptions{}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "--replace") {
		t.Errorf("second setup: %v", err)
	}
	if n := srv.gets["debian-6.0.2.1-64bit-v0.3.vdi.gz"].Load(); n != gets {
		t.Errorf("a refused setup downloaded")
	}
	// Another id installs beside it; --replace replaces.
	if _, err := l.SetupModel(ctx, url, SetupOptions{ID: "deb6", Overrides: &spec.Image{Username: "root"}}); err != nil {
		t.Fatal(err)
	}
	deb6, err := l.SetupModel(ctx, url, SetupOptions{ID: "deb6", Replace: true, Meta: &spec.Image{OSFamily: "debian", Description: "replaced"}})
	if err != nil {
		t.Fatal(err)
	}
	if deb6.Spec.Description != "replaced" || deb6.Spec.Username != "" {
		t.Errorf("replaced model = %+v", deb6.Spec)
	}

	// A machine made from the model pins it.
	mach, err := l.Instance(ctx, "user1", ImageModel("deb6"), HardwareSpec(spec.Hardware{MemorySize: 128}))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveModel(ctx, "deb6"); !errors.Is(err, ErrWrongState) || !strings.Contains(err.Error(), "user1") {
		t.Errorf("remove in use: %v", err)
	}
	if _, err := l.SetupModel(ctx, url, SetupOptions{ID: "deb6", Replace: true}); !errors.Is(err, ErrWrongState) || !strings.Contains(err.Error(), "user1") {
		t.Errorf("replace in use: %v", err)
	}
	if _, err := os.Stat(filepath.Join(l.images.Dir("deb6"), store.ModelDiskFile)); err != nil {
		t.Errorf("refused removal touched the model: %v", err)
	}
	if err := mach.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveModel(ctx, "deb6"); err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveModel(ctx, "deb6"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	if err := l.RemoveModel(ctx, "../x"); !errors.Is(err, ErrInvalid) {
		t.Errorf("remove bad id: %v", err)
	}
	if got := registryState(t, l); got != "images/"+id {
		t.Errorf("state after removal: %s", got)
	}
}

func TestSetupModelConcurrentDownloadsOnce(t *testing.T) {
	l := newTestServer(t)
	ctx := ctxTimeout(t, 2*time.Minute)
	_, gz := smallDisk(t)
	srv, base := publish(t, map[string][]byte{"shared.raw.gz": gz})
	// A second server over the same state directory: another process.
	other, err := NewLocal(l.cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	results := make([]model.ImageModel, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srvr := l
			if i%2 == 1 {
				srvr = other
			}
			results[i], errs[i] = srvr.SetupModel(ctx, base+"/shared.raw.gz", SetupOptions{})
		}()
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil {
			t.Fatalf("setup %d: %v", i, errs[i])
		}
		if results[i].SHA256 != results[0].SHA256 || !results[i].Installed.Equal(results[0].Installed) {
			t.Errorf("setup %d returned another model: %+v", i, results[i])
		}
	}
	if n := srv.gets["shared.raw.gz"].Load(); n != 1 {
		t.Errorf("%d downloads, want 1", n)
	}
	if got := registryState(t, l); got != "images/shared" {
		t.Errorf("state: %s", got)
	}
}

func TestSetupModelFailuresLeaveNothing(t *testing.T) {
	l := newTestServer(t)
	ctx := ctxTimeout(t, 2*time.Minute)
	_, gz := smallDisk(t)
	corrupt := bytes.Clone(gz)
	corrupt[len(corrupt)/2] ^= 0x55
	_, base := publish(t, map[string][]byte{
		"good.raw.gz":    gz,
		"corrupt.raw.gz": corrupt,
		"cut.raw.gz":     gz[:len(gz)-100],
		"page.img":       []byte("<html>Not here</html>\n"),
		"bad.raw.gz":     gz,
		"bad.meta":       []byte("os-family: [not, a, string]\n"),
	})
	if _, err := l.SetupModel(ctx, base+"/good.raw.gz", SetupOptions{ID: "keep"}); err != nil {
		t.Fatal(err)
	}
	before := registryState(t, l)
	tests := []struct {
		name   string
		source string
		opts   SetupOptions
		is     error
		says   string
	}{
		{"404", base + "/gone.qcow2", SetupOptions{}, image.ErrSource, "404 Not Found"},
		{"checksum", base + "/good.raw.gz", SetupOptions{ID: "other", SHA256: strings.Repeat("0", 64)}, image.ErrChecksum, "nothing was installed"},
		{"corrupt gzip", base + "/corrupt.raw.gz", SetupOptions{}, image.ErrCorrupt, "gzip"},
		{"truncated gzip", base + "/cut.raw.gz", SetupOptions{}, image.ErrCorrupt, "truncated"},
		{"not a disk", base + "/page.img", SetupOptions{}, image.ErrNotDiskImage, "text"},
		{"bad meta", base + "/bad.raw.gz", SetupOptions{}, image.ErrMeta, "os-family"},
		{"bad id", base + "/good.raw.gz", SetupOptions{ID: "a/b"}, ErrInvalid, "image model name"},
		{"bad sha256", base + "/good.raw.gz", SetupOptions{ID: "x", SHA256: "12"}, ErrInvalid, "64 hexadecimal"},
		{"exists", base + "/good.raw.gz", SetupOptions{ID: "keep"}, ErrExists, "already installed"},
		{"bad scheme", "ftp://127.0.0.1/a.img", SetupOptions{}, ErrInvalid, "scheme"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := l.SetupModel(ctx, tt.source, tt.opts)
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("err = %v\nwant %v saying %q", err, tt.is, tt.says)
			}
			if got := registryState(t, l); got != before {
				t.Errorf("state after failure: %q, want %q", got, before)
			}
		})
	}
}

func TestHardwareModelsAddRemove(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	tiny := spec.Hardware{MemorySize: 256, CPUCount: 1}
	if err := l.AddHardwareModel(ctx, "tiny", tiny); err != nil {
		t.Fatal(err)
	}
	names, _ := l.HardwareModels(ctx)
	if names[len(names)-1] != "tiny" {
		t.Errorf("models = %v", names)
	}
	if h, err := l.HardwareModel(ctx, "tiny"); err != nil || h.MemorySize != 256 || len(h.Network) != 1 {
		t.Errorf("tiny = %+v, %v", h, err)
	}
	data, err := os.ReadFile(filepath.Join(l.home.HardwareModelsPath(), "tiny.yaml"))
	if err != nil || !strings.Contains(string(data), "memory-size: 256") {
		t.Errorf("tiny.yaml = %q, %v", data, err)
	}
	tests := []struct {
		name string
		op   func() error
		is   error
		says string
	}{
		{"add exists", func() error { return l.AddHardwareModel(ctx, "tiny", tiny) }, ErrExists, "hardware rm tiny"},
		{"add invalid", func() error { return l.AddHardwareModel(ctx, "bad", spec.Hardware{MemorySize: -1}) }, ErrInvalid, "memory-size"},
		{"add bad name", func() error { return l.AddHardwareModel(ctx, "a b", tiny) }, ErrInvalid, "hardware model name"},
		{"remove built-in", func() error { return l.RemoveHardwareModel(ctx, "micro") }, ErrInvalid, "cannot be removed"},
		{"remove unknown", func() error { return l.RemoveHardwareModel(ctx, "huge") }, ErrNotFound, "huge"},
	}
	for _, tt := range tests {
		if err := tt.op(); !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("%s: err = %v, want %v saying %q", tt.name, err, tt.is, tt.says)
		}
	}
	if _, err := os.Stat(filepath.Join(l.home.HardwareModelsPath(), "bad.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an invalid model was written: %v", err)
	}
	if err := l.RemoveHardwareModel(ctx, "tiny"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.HardwareModel(ctx, "tiny"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after rm: %v", err)
	}
}

// TestSetupModelTinyImageBoots installs the tiny guest from a web server,
// as a user installs a published image, and boots a machine from it.
func TestSetupModelTinyImageBoots(t *testing.T) {
	tiny := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 5*time.Minute)
	// The packaged image (make image) when it is there, else made here.
	gzPath := strings.TrimSuffix(tiny.Location, ".qcow2") + ".qcow2.gz"
	gz, err := os.ReadFile(gzPath)
	if err != nil {
		disk, err := os.ReadFile(tiny.Location)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(disk)
		zw.Close()
		gz = buf.Bytes()
	}
	meta, err := os.ReadFile(strings.TrimSuffix(tiny.Location, ".qcow2") + ".meta")
	if err != nil {
		t.Fatal(err)
	}
	// The published checksum (scripts/package-image.sh) when it is there.
	sums, err := os.ReadFile(strings.TrimSuffix(tiny.Location, ".qcow2") + ".sha256")
	if err != nil || !bytes.Contains(sums, []byte("vmfest-tiny.qcow2.gz")) {
		sums = sha256Line(gz, "vmfest-tiny.qcow2.gz")
	}
	_, base := publish(t, map[string][]byte{
		"vmfest-tiny.qcow2.gz": gz,
		"vmfest-tiny.meta":     meta,
		"vmfest-tiny.sha256":   sums,
	})
	begun := time.Now()
	m, err := l.SetupModel(ctx, base+"/vmfest-tiny.qcow2.gz", SetupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("setup-model of the %d-byte tiny image over HTTP took %s", len(gz), time.Since(begun).Round(time.Millisecond))
	if m.ID != "vmfest-tiny" || !m.Verified || m.Spec.Username != "root" || !m.Spec.CloudInit {
		t.Errorf("model = %+v", m)
	}
	mach, err := l.Instance(ctx, "from-model", ImageModel(m.ID), HardwareSpec(spec.Hardware{MemorySize: 256}))
	if err != nil {
		t.Fatal(err)
	}
	if err := mach.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := mach.WaitReady(ctx); err != nil {
		log, _ := mach.ConsoleLog(ctx)
		t.Fatalf("%v\nconsole:\n%s", err, tail(log, 2000))
	}
	if err := mach.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveModel(ctx, m.ID); !errors.Is(err, ErrWrongState) {
		t.Errorf("remove while a machine exists: %v", err)
	}
	if err := mach.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveModel(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
