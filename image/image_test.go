package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/vmfest/vmfest/spec"
)

// rawDisk writes a small raw disk (4 MiB: an MBR signature, some random
// data, the rest zeros) and returns its path.
func rawDisk(t *testing.T, dir string) string {
	t.Helper()
	b := make([]byte, 4<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 64<<10; i++ {
		b[1<<20+i] = byte(r.Uint32())
	}
	b[510], b[511] = 0x55, 0xaa
	p := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
}

// diskAs converts the raw disk to format (qemu-img's name) with extra
// options and returns the new file's path.
func diskAs(t *testing.T, raw, format string, opts ...string) string {
	t.Helper()
	if format == FormatRaw {
		return raw
	}
	out := filepath.Join(filepath.Dir(raw), "disk."+format+strings.Join(opts, ""))
	args := append([]string{"convert", "-f", "raw", "-O", format}, opts...)
	qemuImg(t, append(args, raw, out)...)
	return out
}

func compressWith(t *testing.T, kind string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch kind {
	case CompressionNone:
		return data
	case CompressionGzip:
		w = gzip.NewWriter(&buf)
	case CompressionXZ:
		w, err = xz.NewWriter(&buf)
	case CompressionZstd:
		w, err = zstd.NewWriter(&buf)
	case CompressionBzip2:
		cmd := exec.Command("bzip2", "-c")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bzip2: %v", err)
		}
		return out
	default:
		t.Fatalf("unknown compression %s", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type member struct {
	name string
	data []byte
}

func tarOf(t *testing.T, members ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		if err := tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(m.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// files is an http handler serving named byte slices, counting requests
// per path; it honours Range (http.ServeContent).
type files struct {
	content map[string][]byte
	hits    map[string]*atomic.Int32
}

func newFiles(content map[string][]byte) *files {
	f := &files{content: content, hits: map[string]*atomic.Int32{}}
	for name := range content {
		f.hits[name] = new(atomic.Int32)
	}
	return f
}

func (f *files) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/")
	data, ok := f.content[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	f.hits[name].Add(1)
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(data))
}

func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func testConfig(t *testing.T) Config {
	t.Helper()
	return Config{
		CacheDir: filepath.Join(t.TempDir(), "cache"),
		Backoff:  time.Millisecond,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// prepare runs LockSource and Prepare as a caller does.
func prepare(t *testing.T, cfg Config, source string, opts Options) (*Staged, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src, err := ParseSource(source)
	if err != nil {
		return nil, err
	}
	lock, err := LockSource(ctx, cfg.CacheDir, src)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	st, err := Prepare(ctx, cfg, lock, src, opts)
	if st != nil {
		t.Cleanup(func() { st.Cleanup() })
	}
	return st, err
}

// sameDisk fails the test unless the staged qcow2 holds the same guest
// data as the raw disk.
func sameDisk(t *testing.T, raw, staged string) {
	t.Helper()
	qemuImg(t, "compare", "-f", "raw", "-F", "qcow2", raw, staged)
}

// cacheLeftovers lists what is in the cache directory.
func cacheLeftovers(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestPrepareFormatsAndCompressions(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	qcow := diskAs(t, raw, FormatQCOW2)
	ovf := []byte(`<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <VirtualSystem ovf:id="deb">
    <Name>deb</Name>
    <OperatingSystemSection ovf:id="96"><Info>os</Info><Description>Debian_64</Description><vbox:OSType ovf:required="false">Debian_64</vbox:OSType></OperatingSystemSection>
    <AnnotationSection><Info>note</Info><Annotation>Debian 12 appliance</Annotation></AnnotationSection>
  </VirtualSystem>
</Envelope>`)
	tests := []struct {
		name        string
		file        string
		data        []byte
		format      string
		compression string
		container   string
		meta        spec.Image // expected fields from the archive
	}{
		{"raw", "a.raw", readFile(t, raw), FormatRaw, CompressionNone, "", spec.Image{}},
		{"qcow2", "a.qcow2", readFile(t, qcow), FormatQCOW2, CompressionNone, "", spec.Image{}},
		{"vdi", "a.vdi", readFile(t, diskAs(t, raw, FormatVDI)), FormatVDI, CompressionNone, "", spec.Image{}},
		{"vmdk", "a.vmdk", readFile(t, diskAs(t, raw, FormatVMDK)), FormatVMDK, CompressionNone, "", spec.Image{}},
		{"vmdk streamOptimized", "b.vmdk", readFile(t, diskAs(t, raw, FormatVMDK, "-o", "subformat=streamOptimized")), FormatVMDK, CompressionNone, "", spec.Image{}},
		{"vhd dynamic", "a.vhd", readFile(t, diskAs(t, raw, FormatVHD, "-o", "force_size=on")), FormatVHD, CompressionNone, "", spec.Image{}},
		{"vhd fixed", "b.vhd", readFile(t, diskAs(t, raw, FormatVHD, "-o", "subformat=fixed,force_size=on")), FormatVHD, CompressionNone, "", spec.Image{}},
		{"vhdx", "a.vhdx", readFile(t, diskAs(t, raw, FormatVHDX)), FormatVHDX, CompressionNone, "", spec.Image{}},
		{"gzip", "a.qcow2.gz", compressWith(t, CompressionGzip, readFile(t, qcow)), FormatQCOW2, CompressionGzip, "", spec.Image{}},
		{"xz", "a.raw.xz", compressWith(t, CompressionXZ, readFile(t, raw)), FormatRaw, CompressionXZ, "", spec.Image{}},
		{"zstd", "a.qcow2.zst", compressWith(t, CompressionZstd, readFile(t, qcow)), FormatQCOW2, CompressionZstd, "", spec.Image{}},
		{"bzip2", "a.raw.bz2", compressWith(t, CompressionBzip2, readFile(t, raw)), FormatRaw, CompressionBzip2, "", spec.Image{}},
		{"sniffed, not suffixed", "plain", compressWith(t, CompressionGzip, readFile(t, raw)), FormatRaw, CompressionGzip, "", spec.Image{}},
		{"vagrant box", "deb.box", compressWith(t, CompressionGzip, tarOf(t,
			member{"./metadata.json", []byte(`{"provider": "libvirt", "format": "qcow2", "virtual_size": 1}`)},
			member{"./Vagrantfile", []byte("Vagrant.configure(2) do |c| end\n")},
			member{"./box.img", readFile(t, qcow)},
		)), FormatQCOW2, CompressionGzip, ContainerBox, spec.Image{Username: "vagrant", Password: "vagrant", Description: "Vagrant box (libvirt provider)"}},
		{"ova", "deb.ova", tarOf(t,
			member{"deb.ovf", ovf},
			member{"deb.mf", []byte("SHA1(deb.ovf)= 00\n")},
			member{"deb-disk001.vmdk", readFile(t, diskAs(t, raw, FormatVMDK, "-o", "subformat=streamOptimized"))},
		), FormatVMDK, CompressionNone, ContainerOVA, spec.Image{OSFamily: "debian", OS64Bit: true, Description: "Debian 12 appliance"}},
	}
	content := map[string][]byte{}
	for _, tt := range tests {
		content[tt.file] = tt.data
	}
	srv := serve(t, newFiles(content))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			var last Progress
			st, err := prepare(t, cfg, srv.URL+"/"+tt.file, Options{Progress: func(p Progress) {
				if p.Phase == PhaseDownload {
					last = p
				}
			}})
			if err != nil {
				t.Fatal(err)
			}
			if st.Format != tt.format || st.Compression != tt.compression || st.Container != tt.container {
				t.Errorf("got format %s, compression %s, container %q; want %s, %s, %q", st.Format, st.Compression, st.Container, tt.format, tt.compression, tt.container)
			}
			if st.VirtualSize != 4<<20 {
				t.Errorf("virtual size = %d", st.VirtualSize)
			}
			sum := sha256.Sum256(tt.data)
			if st.SHA256 != hex.EncodeToString(sum[:]) || st.Verified {
				t.Errorf("sha256 = %s (verified %v), want %x unverified", st.SHA256, st.Verified, sum)
			}
			if last.Done != int64(len(tt.data)) || last.Total != int64(len(tt.data)) {
				t.Errorf("last download progress = %+v, want %d bytes", last, len(tt.data))
			}
			want := tt.meta
			want.Immutable = true
			if fmt.Sprint(st.Meta) != fmt.Sprint(want) {
				t.Errorf("meta = %+v, want %+v", st.Meta, want)
			}
			fi, err := os.Stat(st.Disk())
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o400 {
				t.Errorf("staged disk mode = %v, want 0400 (read-only, private)", fi.Mode())
			}
			entries, _ := os.ReadDir(st.Dir)
			if len(entries) != 1 {
				t.Errorf("staging directory holds %d files, want only the disk", len(entries))
			}
			sameDisk(t, raw, st.Disk())
			st.Cleanup()
			if left := cacheLeftovers(t, cfg.CacheDir); len(left) != 0 {
				t.Errorf("left in the cache: %v", left)
			}
		})
	}
}

func TestPrepareLocalSources(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	gz := filepath.Join(dir, "local-1.0.raw.gz")
	os.WriteFile(gz, compressWith(t, CompressionGzip, readFile(t, raw)), 0o644)
	os.WriteFile(filepath.Join(dir, "local-1.0.meta"), []byte("{:os-family :alpine :os-version \"3.20\" :username \"root\"}\n"), 0o644)
	sum := sha256.Sum256(readFile(t, gz))
	os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(fmt.Sprintf("%x  other.img\n%x *local-1.0.raw.gz\n", sum, sum)), 0o644)
	for _, source := range []string{gz, "file://" + gz} {
		t.Run(source, func(t *testing.T) {
			st, err := prepare(t, testConfig(t), source, Options{Overrides: &spec.Image{Username: "admin"}})
			if err != nil {
				t.Fatal(err)
			}
			if !st.Verified || st.SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("not verified against SHA256SUMS: %+v", st)
			}
			if st.Meta.OSFamily != "alpine" || st.Meta.OSVersion != "3.20" || st.Meta.Username != "admin" {
				t.Errorf("meta = %+v: want the sidecar's, with the username overridden", st.Meta)
			}
			sameDisk(t, raw, st.Disk())
		})
	}
}

// failingCase is a source that must fail with want, leaving nothing.
func TestPrepareFailures(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	gz := compressWith(t, CompressionGzip, readFile(t, raw))
	corrupt := bytes.Clone(gz)
	corrupt[len(corrupt)/2] ^= 0xff
	badCRC := bytes.Clone(gz)
	badCRC[len(badCRC)-6] ^= 0xff // the CRC-32 in the trailer
	goodSum := sha256.Sum256(gz)
	content := map[string][]byte{
		"good.raw.gz":          gz,
		"truncated.raw.gz":     gz[:len(gz)/2],
		"corrupt.raw.gz":       corrupt,
		"badcrc.raw.gz":        badCRC,
		"page.qcow2":           []byte("<!DOCTYPE html><html><body>Sign in to download</body></html>\n"),
		"empty.img":            nil,
		"odd.img":              make([]byte, 1000),
		"listed.raw.gz":        gz,
		"listed.raw.gz.sha256": []byte(strings.Repeat("0", 64) + "  listed.raw.gz\n"),
		"badmeta.raw.gz":       gz,
		"badmeta.meta":         []byte("{:os-family :debian :colour \"blue\"}"),
		"backed.qcow2":         nil, // filled below
	}
	backing := filepath.Join(dir, "backed.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", raw, backing)
	content["backed.qcow2"] = readFile(t, backing)
	srv := serve(t, newFiles(content))
	refused := httptest.NewServer(http.NotFoundHandler())
	refusedURL := refused.URL
	refused.Close()

	tests := []struct {
		name   string
		source string
		opts   Options
		want   error
		says   string
	}{
		{"404", srv.URL + "/missing.qcow2", Options{}, ErrSource, "404 Not Found"},
		{"connection refused", refusedURL + "/a.qcow2", Options{}, ErrSource, "connection refused"},
		{"no such file", filepath.Join(dir, "nope.qcow2"), Options{}, ErrSource, "no such file"},
		{"checksum mismatch", srv.URL + "/good.raw.gz", Options{SHA256: strings.Repeat("ab", 32)}, ErrChecksum, "--sha256 says abab"},
		{"published checksum mismatch", srv.URL + "/listed.raw.gz", Options{}, ErrChecksum, "listed.raw.gz.sha256 says 0000"},
		{"bad --sha256", srv.URL + "/good.raw.gz", Options{SHA256: "xyz"}, ErrChecksum, "64 hexadecimal digits"},
		{"truncated gzip", srv.URL + "/truncated.raw.gz", Options{}, ErrCorrupt, "gzip stream ends early"},
		{"corrupt gzip", srv.URL + "/corrupt.raw.gz", Options{}, ErrCorrupt, "gzip stream is damaged"},
		{"gzip with a bad CRC", srv.URL + "/badcrc.raw.gz", Options{}, ErrCorrupt, "gzip stream is damaged"},
		{"html page", srv.URL + "/page.qcow2", Options{}, ErrNotDiskImage, "it is text"},
		{"empty", srv.URL + "/empty.img", Options{}, ErrNotDiskImage, "empty"},
		{"not sectors", srv.URL + "/odd.img", Options{}, ErrNotDiskImage, "512-byte sectors"},
		{"bad sidecar meta", srv.URL + "/badmeta.raw.gz", Options{}, ErrMeta, `unknown key "colour"`},
		{"backing file", srv.URL + "/backed.qcow2", Options{}, ErrNotDiskImage, "backing file"},
		{"checksum of the good file passes", srv.URL + "/good.raw.gz", Options{SHA256: hex.EncodeToString(goodSum[:])}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Attempts = 2
			st, err := prepare(t, cfg, tt.source, tt.opts)
			if tt.want == nil {
				if err != nil || !st.Verified {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("err = %v\nwant %v saying %q", err, tt.want, tt.says)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if left := cacheLeftovers(t, cfg.CacheDir); len(left) != 0 {
				t.Errorf("left in the cache: %v", left)
			}
		})
	}
}

// cutting serves data, cutting the first response off after cut bytes
// (the connection is dropped) and honouring Range afterwards.
type cutting struct {
	data     []byte
	cut      int
	requests atomic.Int32
	ranges   atomic.Int32
	served   atomic.Int64
}

func (c *cutting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/x.raw.gz" {
		http.NotFound(w, r)
		return
	}
	n := c.requests.Add(1)
	if r.Header.Get("Range") != "" {
		c.ranges.Add(1)
	}
	if n == 1 {
		w.Header().Set("Content-Length", fmt.Sprint(len(c.data)))
		w.Header().Set("Accept-Ranges", "bytes")
		w.Write(c.data[:c.cut])
		c.served.Add(int64(c.cut))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
	cw := &countingWriter{ResponseWriter: w, n: &c.served}
	http.ServeContent(cw, r, "x", time.Time{}, bytes.NewReader(c.data))
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n.Add(int64(n))
	return n, err
}

func TestPrepareResumesACutDownload(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	gz := compressWith(t, CompressionGzip, readFile(t, raw))

	t.Run("within one setup", func(t *testing.T) {
		h := &cutting{data: gz, cut: len(gz) / 3}
		srv := serve(t, h)
		st, err := prepare(t, testConfig(t), srv.URL+"/x.raw.gz", Options{})
		if err != nil {
			t.Fatal(err)
		}
		sameDisk(t, raw, st.Disk())
		if h.ranges.Load() != 1 || h.served.Load() != int64(len(gz)) {
			t.Errorf("%d range requests, %d bytes served for a %d-byte file: want one resume and no byte twice", h.ranges.Load(), h.served.Load(), len(gz))
		}
	})
	t.Run("across setups, from the cache", func(t *testing.T) {
		h := &cutting{data: gz, cut: len(gz) / 3}
		srv := serve(t, h)
		cfg := testConfig(t)
		cfg.Attempts = 1
		_, err := prepare(t, cfg, srv.URL+"/x.raw.gz", Options{})
		if !errors.Is(err, ErrSource) || !strings.Contains(err.Error(), "run the same command again to resume") {
			t.Fatalf("err = %v, want a broken-off download", err)
		}
		left := cacheLeftovers(t, cfg.CacheDir)
		if len(left) != 1 || !strings.HasSuffix(left[0], ".part") {
			t.Fatalf("cache holds %v, want the partial download only", left)
		}
		st, err := prepare(t, cfg, srv.URL+"/x.raw.gz", Options{})
		if err != nil {
			t.Fatal(err)
		}
		sameDisk(t, raw, st.Disk())
		if h.ranges.Load() != 1 || h.served.Load() != int64(len(gz)) {
			t.Errorf("%d range requests, %d bytes served for a %d-byte file", h.ranges.Load(), h.served.Load(), len(gz))
		}
		st.Cleanup()
		if left := cacheLeftovers(t, cfg.CacheDir); len(left) != 0 {
			t.Errorf("left in the cache: %v", left)
		}
	})
}

func TestPrepareRetriesServerErrors(t *testing.T) {
	dir := t.TempDir()
	data := readFile(t, rawDisk(t, dir))
	var n atomic.Int32
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/flaky.raw" {
			http.NotFound(w, r)
			return
		}
		if n.Add(1) <= 2 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		http.ServeContent(w, r, "x", time.Time{}, bytes.NewReader(data))
	}))
	cfg := testConfig(t)
	if _, err := prepare(t, cfg, srv.URL+"/flaky.raw", Options{}); err != nil {
		t.Fatalf("after two 503s: %v", err)
	}
	n.Store(-100)
	cfg.Attempts = 3
	_, err := prepare(t, cfg, srv.URL+"/flaky.raw", Options{})
	if !errors.Is(err, ErrSource) || !strings.Contains(err.Error(), "gave up after 3 attempts") {
		t.Fatalf("err = %v", err)
	}
}

// stalling sends the first half of data, then nothing until the client
// gives up; later requests are served whole (Range honoured).
type stalling struct {
	data     []byte
	requests atomic.Int32
}

func (s *stalling) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/s.raw.gz" {
		http.NotFound(w, r)
		return
	}
	if s.requests.Add(1) == 1 {
		w.Header().Set("Content-Length", fmt.Sprint(len(s.data)))
		w.Write(s.data[:len(s.data)/2])
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the client's stall timeout cancels the request
		return
	}
	http.ServeContent(w, r, "s", time.Time{}, bytes.NewReader(s.data))
}

func TestPrepareResumesAStalledDownload(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	h := &stalling{data: compressWith(t, CompressionGzip, readFile(t, raw))}
	srv := serve(t, h)
	cfg := testConfig(t)
	cfg.StallTimeout = 200 * time.Millisecond
	st, err := prepare(t, cfg, srv.URL+"/s.raw.gz", Options{})
	if err != nil {
		t.Fatal(err)
	}
	sameDisk(t, raw, st.Disk())
	if n := h.requests.Load(); n != 2 {
		t.Errorf("%d requests, want the stalled one and one resume", n)
	}
}

func TestPrepareInterruptedKeepsThePartialDownload(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	h := &stalling{data: compressWith(t, CompressionGzip, readFile(t, raw))}
	srv := serve(t, h)
	cfg := testConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src, _ := ParseSource(srv.URL + "/s.raw.gz")
	part := PartialPath(cfg.CacheDir, src)
	go func() { // interrupt (as Ctrl-C does) once some bytes are on disk
		for {
			if fi, err := os.Stat(part); err == nil && fi.Size() > 0 {
				cancel()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	lock, err := LockSource(ctx, cfg.CacheDir, src)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Prepare(ctx, cfg, lock, src, Options{})
	lock.Unlock()
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "run the same command again to resume") {
		t.Fatalf("err = %v", err)
	}
	if left := cacheLeftovers(t, cfg.CacheDir); len(left) != 1 || filepath.Join(cfg.CacheDir, left[0]) != part {
		t.Fatalf("cache holds %v, want the partial download", left)
	}
	st, err := prepare(t, cfg, src.String(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	sameDisk(t, raw, st.Disk())
}

func TestPrepareBadArchives(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	// A VMDK descriptor whose data is in another file.
	whole := tarOf(t, member{"a.ovf", []byte("<Envelope/>")}, member{"a.vmdk", readFile(t, diskAs(t, raw, FormatVMDK, "-o", "subformat=streamOptimized"))})
	cutOVA := whole[:len(whole)/2]
	desc := filepath.Join(dir, "split.vmdk")
	qemuImg(t, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat", raw, desc)
	srv := serve(t, newFiles(map[string][]byte{
		"empty.box":  compressWith(t, CompressionGzip, tarOf(t, member{"metadata.json", []byte(`{"provider":"libvirt"}`)}, member{"Vagrantfile", []byte("#")})),
		"nodisk.ova": tarOf(t, member{"a.ovf", []byte("<Envelope/>")}),
		"badmeta.box": tarOf(t, member{"metadata.json", []byte(`{"provider":`)},
			member{"box.img", readFile(t, raw)}),
		"split.vmdk": readFile(t, desc),
		"cut.ova":    cutOVA,
	}))
	tests := []struct {
		file string
		want error
		says string
	}{
		{"empty.box", ErrNotDiskImage, "box archive holds no disk image"},
		{"nodisk.ova", ErrNotDiskImage, "ova archive holds no disk image"},
		{"badmeta.box", ErrMeta, "metadata.json"},
		{"split.vmdk", ErrNotDiskImage, "VMDK descriptor"},
		{"cut.ova", ErrCorrupt, "archive is truncated"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			cfg := testConfig(t)
			st, err := prepare(t, cfg, srv.URL+"/"+tt.file, Options{})
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.says) {
				t.Fatalf("err = %v, want %v saying %q (%+v)", err, tt.want, tt.says, st)
			}
			if left := cacheLeftovers(t, cfg.CacheDir); len(left) != 0 {
				t.Errorf("left in the cache: %v", left)
			}
		})
	}
}

func TestPrepareRemovesWhatACrashedSetupLeft(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	srv := serve(t, newFiles(map[string][]byte{"a.raw": readFile(t, raw)}))
	cfg := testConfig(t)
	src, _ := ParseSource(srv.URL + "/a.raw")
	other, _ := ParseSource(srv.URL + "/b.raw")
	os.MkdirAll(filepath.Join(cfg.CacheDir, workPrefix(src)+"123", "x"), 0o755)   // a crashed setup of this source
	os.MkdirAll(filepath.Join(cfg.CacheDir, workPrefix(other)+"456", "x"), 0o755) // another source's, maybe running
	st, err := prepare(t, cfg, src.String(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Cleanup()
	if left := cacheLeftovers(t, cfg.CacheDir); len(left) != 1 || left[0] != workPrefix(other)+"456" {
		t.Errorf("cache holds %v, want only the other source's staging directory", left)
	}
}

func TestPrepareHTTPS(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	srv := httptest.NewUnstartedServer(newFiles(map[string][]byte{"a.raw.zst": compressWith(t, CompressionZstd, readFile(t, raw))}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake
	srv.StartTLS()
	t.Cleanup(srv.Close)
	cfg := testConfig(t)
	_, err := prepare(t, cfg, srv.URL+"/a.raw.zst", Options{})
	if !errors.Is(err, ErrSource) || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "attempts") {
		t.Fatalf("an untrusted certificate: err = %v", err)
	}
	cfg.Client = srv.Client() // trusts the test server's certificate
	st, err := prepare(t, cfg, srv.URL+"/a.raw.zst", Options{})
	if err != nil {
		t.Fatal(err)
	}
	sameDisk(t, raw, st.Disk())
}
