package image

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// canaryMarker fills the canary files: host files no image may reach. A
// disk that holds it after a Prepare read a host file.
var canaryMarker = []byte("VMFEST-CANARY-7f3a9c1e5b2d8064!")

// canaryDir lays out a test's world: dir/src/canary-file (0600), the
// source directory dir/src and the cache dir/cache, so that from the
// staged input (cache/.work-*/box/disk.in) "../../../src/canary-file"
// is the canary.
type canaryDir struct {
	dir, src, cache, canary string
}

func newCanaryDir(t testing.TB) canaryDir {
	t.Helper()
	dir := t.TempDir()
	c := canaryDir{dir: dir, src: filepath.Join(dir, "src"), cache: filepath.Join(dir, "cache")}
	c.canary = filepath.Join(c.src, "canary-file")
	if err := os.MkdirAll(c.src, 0o700); err != nil {
		t.Fatal(err)
	}
	writeCanary(t, c.canary)
	return c
}

func writeCanary(t testing.TB, path string) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Repeat(canaryMarker, (64<<10)/len(canaryMarker)+1)[:64<<10], 0o600); err != nil {
		t.Fatal(err)
	}
}

// noCanaryUnder fails the test if any regular file under dir holds the
// canary's content.
func noCanaryUnder(t testing.TB, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			return nil
		}
		if bytes.Contains(b, canaryMarker) {
			t.Errorf("%s holds the canary's content: a host file was read into the image", p)
		}
		return nil
	})
}

// hostileImage builds one hostile disk at path.
type hostileImage struct {
	name string
	make func(t testing.TB, c canaryDir, path string)
}

func hostileImages() []hostileImage {
	return []hostileImage{
		// Finding 1 of issue 10.
		{"vmdk flat extent, absolute", func(t testing.TB, c canaryDir, p string) { hostileVMDK(t, p, c.canary, 128) }},
		{"vmdk flat extent, relative to the download", func(t testing.TB, c canaryDir, p string) { hostileVMDK(t, p, "canary-file", 128) }},
		{"vmdk flat extent, relative to the staged file", func(t testing.TB, c canaryDir, p string) {
			hostileVMDK(t, p, "../../../src/canary-file", 128)
		}},
		{"vmdk flat extent, capacity kept", func(t testing.TB, c canaryDir, p string) {
			hostileVMDK(t, p, c.canary, 128)
			patchFile(t, p, 12, []byte{0, 8, 0, 0, 0, 0, 0, 0}) // 2048 sectors again
		}},
		{"vmdk descriptor file", func(t testing.TB, c canaryDir, p string) {
			os.WriteFile(p, []byte("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 128 FLAT \""+c.canary+"\" 0\n"), 0o600)
		}},
		{"qcow2 backing file", func(t testing.TB, c canaryDir, p string) {
			qemuImgCreate(t, p, "-f", "qcow2", "-b", c.canary, "-F", "raw", "1M")
		}},
		{"qcow2 external data file", func(t testing.TB, c canaryDir, p string) {
			data := filepath.Join(c.src, "data-file")
			qemuImgCreate(t, p, "-f", "qcow2", "-o", "data_file="+data+",data_file_raw=on", "1M")
			writeCanary(t, data)
		}},
		{"vhdx differencing (parent locator)", func(t testing.TB, c canaryDir, p string) { craftVHDX(t, p, 1<<20, true, true) }},
		{"vdi differencing", func(t testing.TB, c canaryDir, p string) {
			qemuImgCreate(t, p, "-f", "vdi", "1M")
			patchFile(t, p, 0x4c, le32(4))
		}},
		{"vhd differencing", func(t testing.TB, c canaryDir, p string) {
			qemuImgCreate(t, p, "-f", "vpc", "1M")
			fi, _ := os.Stat(p)
			patchFile(t, p, fi.Size()-512+60, be32(4))
			patchFile(t, p, 60, be32(4))
		}},
		{"raw that begins with a qcow2 header naming a backing file", func(t testing.TB, c canaryDir, p string) {
			qemuImgCreate(t, p, "-f", "qcow2", "-b", c.canary, "-F", "raw", "1M")
			os.Truncate(p, 1<<20)
		}},
	}
}

// TestPrepareRefusesHostileImages holds findings 1 and 3's check of issue
// 10 at install: every disk that names another file is refused, and no
// byte of a host file reaches the cache.
func TestPrepareRefusesHostileImages(t *testing.T) {
	requireBox(t)
	for _, h := range hostileImages() {
		t.Run(h.name, func(t *testing.T) {
			c := newCanaryDir(t)
			src := filepath.Join(c.src, "disk.img")
			h.make(t, c, src)
			cfg := testConfig(t)
			cfg.CacheDir = c.cache
			st, err := prepare(t, cfg, src, Options{})
			if err == nil {
				t.Fatalf("Prepare installed %s (format %s)", h.name, st.Format)
			}
			if !errors.Is(err, ErrNotDiskImage) {
				t.Errorf("Prepare: %v; want ErrNotDiskImage (or ErrNotSelfContained)", err)
			}
			if strings.Contains(err.Error(), c.dir) {
				t.Errorf("the error names a host path: %v", err)
			}
			noCanaryUnder(t, c.cache)
			if left := cacheLeftovers(t, c.cache); len(left) > 0 {
				t.Errorf("the cache keeps %v", left)
			}
		})
	}
}

// requireBox skips when qemu-img or bwrap is missing (install-deps.sh
// installs both).
func requireBox(t testing.TB) {
	t.Helper()
	for _, p := range []string{"qemu-img", "bwrap"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s is not installed", p)
		}
	}
}

// testBox builds a box around a fresh directory under dir.
func testBox(t testing.TB, dir string) box {
	t.Helper()
	staging := filepath.Join(dir, "staging")
	if err := os.Mkdir(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := newBox(Config{}.withDefaults(), filepath.Join(staging, boxDirName))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.prepareDir(); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBoxConfinesQEMUImg holds the box alone: qemu-img converting the
// hostile VMDK with no inspector in front of it reads no host file, and
// sees no /etc, /root, /home or /proc.
func TestBoxConfinesQEMUImg(t *testing.T) {
	requireBox(t)
	c := newCanaryDir(t)
	b := testBox(t, c.dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	in := filepath.Join(b.dir, inputDisk)
	hostileVMDK(t, in, c.canary, 128)
	if err := b.give(in); err != nil {
		t.Fatal(err)
	}
	err := convert(ctx, b, inputDisk, FormatVMDK, "out.qcow2", 1<<16, func(int64, int64) {})
	if err == nil {
		t.Log("qemu-img converted the hostile VMDK in the box; checking its output")
	} else if !strings.Contains(err.Error(), "No such file") {
		t.Errorf("boxed convert: %v; want qemu-img not to find the extent", err)
	}
	noCanaryUnder(t, c.dir+"/cache")
	noCanaryUnder(t, b.dir)

	t.Run("no host files", func(t *testing.T) {
		for _, p := range []string{"/etc/passwd", "/etc/hostname", "/root", "/home", "/proc/self/status", "/sys/kernel", "/tmp", c.canary} {
			_, err := runBoxed(ctx, b, "info", "-f", "raw", p)
			if err == nil || !strings.Contains(err.Error(), "No such file") {
				t.Errorf("qemu-img info %s in the box: %v; want no such file", p, err)
			}
		}
	})
	t.Run("unprivileged", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("not root: the box runs as the caller")
		}
		if _, err := runBoxed(ctx, b, "create", "-q", "-f", "qcow2", b.inside("made"), "1M"); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(b.dir, "made"))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != DefaultBoxUID || st.Gid != DefaultBoxGID {
			t.Errorf("a file qemu-img made is owned by %d:%d; want %d:%d", st.Uid, st.Gid, DefaultBoxUID, DefaultBoxGID)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		ccancel()
		if _, err := runBoxed(cctx, b, "info", b.inside(inputDisk)); !errors.Is(err, context.Canceled) {
			t.Errorf("boxed run under a cancelled context: %v; want context.Canceled", err)
		}
	})
}

func TestPrepareWithoutBwrapFailsClosed(t *testing.T) {
	c := newCanaryDir(t)
	src := filepath.Join(c.src, "disk.raw")
	os.WriteFile(src, bytes.Repeat([]byte{1}, 1<<16), 0o600)
	cfg := testConfig(t)
	cfg.Bwrap = filepath.Join(c.dir, "no-such-bwrap")
	_, err := prepare(t, cfg, src, Options{})
	if !errors.Is(err, ErrNoBox) || !strings.Contains(err.Error(), "install the bubblewrap package") {
		t.Fatalf("Prepare without bwrap: %v; want ErrNoBox saying to install bubblewrap", err)
	}
	if left := cacheLeftovers(t, cfg.CacheDir); len(left) > 0 {
		t.Errorf("the cache keeps %v", left)
	}
}

func TestPrepareSizeCaps(t *testing.T) {
	requireBox(t)
	c := newCanaryDir(t)
	raw := filepath.Join(c.src, "disk.raw")
	os.WriteFile(raw, bytes.Repeat([]byte{1}, 1<<20), 0o600)
	sparse := filepath.Join(c.src, "disk.qcow2")
	qemuImgCreate(t, sparse, "-f", "qcow2", "1M")
	tests := []struct {
		name, src string
		cfg       func(*Config)
		want      string
	}{
		{"decompressed", raw, func(c *Config) { c.MaxDiskSize = 512 << 10 }, "the limit of 524288 bytes (Config.MaxDiskSize)"},
		{"virtual", sparse, func(c *Config) { c.MaxVirtualSize = 512 << 10 }, "virtual size is 1048576 bytes, more than the limit of 524288"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.cfg(&cfg)
			_, err := prepare(t, cfg, tc.src, Options{})
			if !errors.Is(err, ErrDiskTooLarge) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Prepare: %v; want ErrDiskTooLarge saying %q", err, tc.want)
			}
			if left := cacheLeftovers(t, cfg.CacheDir); len(left) > 0 {
				t.Errorf("the cache keeps %v", left)
			}
		})
	}
}

func TestCheckFree(t *testing.T) {
	dir := t.TempDir()
	if err := checkFree(dir, 1<<62); !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "needs 4611686018427387904 bytes") {
		t.Errorf("checkFree(4 EiB): %v; want ENOSPC naming the need", err)
	}
	if err := checkFree(dir, 1); err != nil {
		t.Errorf("checkFree(1 byte): %v", err)
	}
}

// TestPrepareIsPrivate: the staging directory and the staged disk are
// not readable by other local users.
func TestPrepareIsPrivate(t *testing.T) {
	requireBox(t)
	c := newCanaryDir(t)
	src := filepath.Join(c.src, "disk.qcow2")
	qemuImgCreate(t, src, "-f", "qcow2", "1M")
	cfg := testConfig(t)
	st, err := prepare(t, cfg, src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]fs.FileMode{st.Dir: 0o700, st.Disk(): 0o400} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, %v; want mode %v", p, fi.Mode().Perm(), err, want)
		}
		if s := fi.Sys().(*syscall.Stat_t); int(s.Uid) != os.Geteuid() {
			t.Errorf("%s is owned by %d; want %d", p, s.Uid, os.Geteuid())
		}
	}
	if in, err := InspectFile(st.Disk(), FormatQCOW2); err != nil || in.VirtualSize != 1<<20 {
		t.Errorf("staged disk: %+v, %v", in, err)
	}
}

// FuzzHostileInstall feeds mutations of the hostile images through the
// install path (inspector, box, qemu-img) and checks that the canary's
// content never reaches the cache, whatever Prepare answers.
func FuzzHostileInstall(f *testing.F) {
	requireBox(f)
	c := newCanaryDir(f)
	var bases [][]byte
	for i, h := range hostileImages() {
		p := filepath.Join(c.dir, "base-"+string(rune('a'+i)))
		h.make(f, c, p)
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		bases = append(bases, b)
		f.Add(uint8(i), uint32(0), []byte{})
		f.Add(uint8(i), uint32(12), []byte{0, 8}) // a VMDK capacity, a qcow2 backing offset
	}
	// Patches aimed at the fields the inspector reads.
	f.Add(uint8(0), uint32(512), []byte("# Disk DescriptorFile\ncreateType=\"monolithicSparse\"\nRW 128 SPARSE \"x\"\nRW 128 FLAT \""+c.canary+"\" 0\n"))
	f.Add(uint8(5), uint32(8), make([]byte, 12))  // qcow2: backing offset and size zeroed
	f.Add(uint8(6), uint32(72), make([]byte, 8))  // qcow2: incompatible bits cleared
	f.Add(uint8(8), uint32(0x4c), le32(vdiFixed)) // vdi: differencing to fixed
	cfg := Config{CacheDir: c.cache, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	src := filepath.Join(c.src, "fuzzed.img")
	f.Fuzz(func(t *testing.T, which uint8, off uint32, patch []byte) {
		b := bytes.Clone(bases[int(which)%len(bases)])
		if len(patch) > 0 && len(b) > 0 {
			copy(b[int(off)%len(b):], patch)
		}
		if err := os.WriteFile(src, b, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := prepare(t, cfg, src, Options{})
		if err == nil {
			defer st.Cleanup()
		}
		noCanaryUnder(t, c.cache)
	})
}

// BenchmarkBoxedQEMUImg measures what the box costs: qemu-img info and
// convert of the tiny guest image (VMFEST_TEST_IMAGE's disk, else a 1 MiB
// qcow2), plain and boxed, side by side.
func BenchmarkBoxedQEMUImg(b *testing.B) {
	requireBox(b)
	dir := b.TempDir()
	bx := testBox(b, dir)
	in := filepath.Join(bx.dir, inputDisk)
	if meta := os.Getenv("VMFEST_TEST_IMAGE"); meta != "" {
		data, err := os.ReadFile(strings.TrimSuffix(meta, ".meta") + ".qcow2")
		if err != nil {
			b.Fatal(err)
		}
		os.WriteFile(in, data, 0o600)
	} else {
		qemuImgCreate(b, in, "-f", "qcow2", "1M")
	}
	if err := bx.give(in); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	plain := func(args ...string) {
		if out, err := exec.CommandContext(ctx, bx.qemuImg, args...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}
	out := filepath.Join(bx.dir, "out.qcow2")
	b.Run("info/plain", func(b *testing.B) {
		for b.Loop() {
			plain("info", "-f", "qcow2", "--output=json", in)
		}
	})
	b.Run("info/boxed", func(b *testing.B) {
		for b.Loop() {
			if _, err := inspect(ctx, bx, inputDisk, FormatQCOW2); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("convert/plain", func(b *testing.B) {
		for b.Loop() {
			os.Remove(out)
			plain("convert", "-f", "qcow2", "-O", "qcow2", in, out)
		}
	})
	b.Run("convert/boxed", func(b *testing.B) {
		for b.Loop() {
			os.Remove(out)
			if err := convert(ctx, bx, inputDisk, FormatQCOW2, "out.qcow2", 1, func(int64, int64) {}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
