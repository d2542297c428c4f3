package vmfest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// rawDisk writes a 1 MiB raw disk of zeros.
func rawDisk(t *testing.T, path string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, make([]byte, 1<<20), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// qcow2Bytes returns a 1 MiB qcow2 image made by qemu-img; args add
// options (a backing file, a data file).
func qcow2Bytes(t *testing.T, args ...string) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "made.qcow2")
	cmd := exec.Command("qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, args...), path, "1M")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// overwriteStart writes data over the start of the file at path, as a guest
// writing its disk's first sectors does.
func overwriteStart(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
}

func readTestRecord(t *testing.T, l *Local, name string) record {
	t.Helper()
	r, err := l.readRecord(name)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestDiskOwnership: a file that is one machine's mutable disk is no other
// machine's disk, mutable or immutable, and a file that is an immutable
// base is no machine's mutable disk, however the path names it.
func TestDiskOwnership(t *testing.T) {
	tests := []struct {
		name          string
		first, second bool // immutable
		via           string
		ok            bool
		want          string
	}{
		{"mutable then mutable", false, false, "path", false, `mutable disk of machine "first"`},
		{"mutable then immutable", false, true, "path", false, `mutable disk of machine "first"`},
		{"immutable then mutable", true, false, "path", false, `immutable base of machine first`},
		{"immutable then immutable", true, true, "path", true, ""},
		{"mutable then immutable through a symlink", false, true, "symlink", false, `mutable disk of machine "first"`},
		{"mutable then immutable through a hard link", false, true, "hardlink", false, `mutable disk of machine "first"`},
		{"immutable then mutable through a hard link", true, false, "hardlink", false, `immutable base of machine first`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newTestServer(t)
			ctx := context.Background()
			disk := rawDisk(t, filepath.Join(l.Home(), "d.raw"), 0o644)
			if _, err := l.Instance(ctx, "first", ImageSpec(spec.Image{Location: disk, Immutable: tt.first}), HardwareModel("micro")); err != nil {
				t.Fatal(err)
			}
			other := disk
			switch tt.via {
			case "symlink":
				other = filepath.Join(l.Home(), "link.raw")
				if err := os.Symlink(disk, other); err != nil {
					t.Fatal(err)
				}
			case "hardlink":
				other = filepath.Join(l.Home(), "hard.raw")
				if err := os.Link(disk, other); err != nil {
					t.Fatal(err)
				}
			}
			_, err := l.Instance(ctx, "second", ImageSpec(spec.Image{Location: other, Immutable: tt.second}), HardwareModel("micro"))
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrExists saying %q", err, tt.want)
			}
			if _, err := l.FindMachine(ctx, "second"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("the refused machine exists: %v", err)
			}
		})
	}
}

// TestDestroyKeepsADiskOthersUse: destroying a mutable machine never
// deletes a file another machine uses (here a state an older vmfest
// allowed: the file is both a mutable disk and another machine's base).
func TestDestroyKeepsADiskOthersUse(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	disk := rawDisk(t, filepath.Join(l.Home(), "shared.raw"), 0o644)
	if _, err := l.Instance(ctx, "base-user", ImageSpec(spec.Image{Location: disk, Immutable: true}), HardwareModel("micro")); err != nil {
		t.Fatal(err)
	}
	// The mutable machine's record, as an older vmfest wrote it.
	r := readTestRecord(t, l, "base-user")
	r.Name, r.Overlay, r.DiskFormat, r.BaseFormat = "owner", false, "raw", ""
	r.Image.Immutable = false
	dir := l.home.MachinePath("owner")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeRecord(dir, r); err != nil {
		t.Fatal(err)
	}
	m, err := l.FindMachine(ctx, "owner")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("destroy deleted a disk another machine uses: %v", err)
	}
	// Once no machine uses it, a mutable machine's disk goes with it.
	b, _ := l.FindMachine(ctx, "base-user")
	if err := b.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	own, err := l.Instance(ctx, "own", ImageSpec(spec.Image{Location: disk}), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	if err := own.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mutable disk survived its machine: %v", err)
	}
}

// TestImageLocationInsideTheStateDirectory: a machine's own files are no
// other machine's disk, and an installed model's disk is never mutable.
func TestImageLocationInsideTheStateDirectory(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	if _, err := l.Instance(ctx, "a", ImageSpec(blankImage(t, l.Home())), HardwareModel("micro")); err != nil {
		t.Fatal(err)
	}
	installModel(t, l, "m")
	modelDisk := filepath.Join(l.images.Dir("m"), store.ModelDiskFile)
	tests := []struct {
		name  string
		image spec.Image
		is    error
		want  string
	}{
		{"another machine's overlay", spec.Image{Location: filepath.Join(l.home.MachinePath("a"), store.DiskFile), Immutable: true}, ErrInvalid, "machines directory"},
		{"another machine's record", spec.Image{Location: filepath.Join(l.home.MachinePath("a"), store.MachineFile)}, ErrInvalid, "machines directory"},
		{"a model's disk as mutable", spec.Image{Location: modelDisk}, ErrInvalid, "installed model's disk is immutable"},
		{"a directory", spec.Image{Location: l.Home(), Immutable: true}, ErrInvalid, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := l.Instance(ctx, "b", ImageSpec(tt.image), HardwareModel("micro"))
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "image location") {
				t.Fatalf("err = %v, want %v saying %q", err, tt.is, tt.want)
			}
		})
	}
	if _, err := l.Instance(ctx, "c", ImageSpec(spec.Image{Location: modelDisk, Immutable: true}), HardwareModel("micro")); err != nil {
		t.Fatalf("a model's disk by path, immutable: %v", err)
	}
}

// installModel installs a small self-contained qcow2 as image model id.
func installModel(t *testing.T, l *Local, id string) model.ImageModel {
	t.Helper()
	if err := os.MkdirAll(l.cacheDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	staged, err := os.MkdirTemp(l.cacheDir(), ".work-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staged, store.ModelDiskFile), qcow2Bytes(t), 0o644); err != nil {
		t.Fatal(err)
	}
	lk, err := l.images.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Unlock()
	m, err := l.images.Install(staged, model.ImageModel{ID: id, Installed: time.Now().UTC()}, false)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestFormatDecidedOnce: a disk's format is decided when a machine first
// uses the file (from the spec's format key, else its content) and
// recorded; what the file's first bytes say later changes nothing.
func TestFormatDecidedOnce(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("host secret"), 0o600)
	header := qcow2Bytes(t, "-F", "raw", "-b", secret)

	t.Run("a raw disk that grew a qcow2 header", func(t *testing.T) {
		l := newTestServer(t)
		ctx := ctxTimeout(t, time.Minute)
		disk := rawDisk(t, filepath.Join(l.Home(), "guest.raw"), 0o644)
		m, err := l.Instance(ctx, "owner", ImageSpec(spec.Image{Location: disk}), HardwareModel("micro"))
		if err != nil {
			t.Fatal(err)
		}
		overwriteStart(t, disk, header) // what the guest wrote
		if _, err := l.Instance(ctx, "next", ImageSpec(spec.Image{Location: disk, Immutable: true}), HardwareModel("micro")); !errors.Is(err, ErrExists) {
			t.Fatalf("another machine on the owned disk: %v", err)
		}
		r := readTestRecord(t, l, "owner")
		d, err := r.driverDisk(l.home.MachinePath("owner"))
		if err != nil {
			t.Fatal(err)
		}
		if d != (qemu.Disk{Path: disk, Format: "raw"}) {
			t.Fatalf("QEMU is given %+v, want the disk as raw", d)
		}
		// QEMU opens the file as raw and nothing else.
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		nodes := blockNodes(ctx, t, l, "owner")
		if len(nodes) != 2 || !containsAll(nodes, []string{"file " + disk, "raw " + disk}) {
			t.Fatalf("QEMU opened %v", nodes)
		}
		if err := m.PowerDown(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the first machine's format holds for the next", func(t *testing.T) {
		l := newTestServer(t)
		ctx := context.Background()
		disk := rawDisk(t, filepath.Join(l.Home(), "base.raw"), 0o644)
		if _, err := l.Instance(ctx, "one", ImageSpec(spec.Image{Location: disk, Immutable: true}), HardwareModel("micro")); err != nil {
			t.Fatal(err)
		}
		if r := readTestRecord(t, l, "one"); r.BaseFormat != "raw" || r.DiskFormat != "qcow2" || !r.Overlay {
			t.Fatalf("record: overlay %v, disk %s, base %s", r.Overlay, r.DiskFormat, r.BaseFormat)
		}
		overwriteStart(t, disk, header)
		if _, err := l.Instance(ctx, "two", ImageSpec(spec.Image{Location: disk, Immutable: true}), HardwareModel("micro")); err != nil {
			t.Fatal(err)
		}
		r := readTestRecord(t, l, "two")
		if r.BaseFormat != "raw" {
			t.Fatalf("second machine's base format = %q, want raw as first recorded", r.BaseFormat)
		}
		d, err := r.driverDisk(l.home.MachinePath("two"))
		if err != nil {
			t.Fatal(err)
		}
		if d.BackingPath != disk || d.BackingFormat != "raw" || d.Format != "qcow2" {
			t.Fatalf("QEMU is given %+v", d)
		}
		_, err = l.Instance(ctx, "three", ImageSpec(spec.Image{Location: disk, Immutable: true, Format: "qcow2"}), HardwareModel("micro"))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "format") || !strings.Contains(err.Error(), disk) {
			t.Fatalf("a format that differs from the recorded one: %v", err)
		}
	})

	t.Run("the spec's format", func(t *testing.T) {
		l := newTestServer(t)
		ctx := context.Background()
		disk := filepath.Join(l.Home(), "given.img")
		os.WriteFile(disk, qcow2Bytes(t), 0o644)
		if _, err := l.Instance(ctx, "raw", ImageSpec(spec.Image{Location: disk, Format: "raw"}), HardwareModel("micro")); err != nil {
			t.Fatal(err)
		}
		if r := readTestRecord(t, l, "raw"); r.DiskFormat != "raw" || r.Image.Format != "raw" {
			t.Fatalf("record: disk %s, image format %s", r.DiskFormat, r.Image.Format)
		}
		_, err := l.Instance(ctx, "bad", ImageSpec(spec.Image{Location: disk, Format: "vmdk"}), HardwareModel("micro"))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `format: "vmdk" is not supported; allowed: raw, qcow2`) {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("a model is qcow2", func(t *testing.T) {
		l := newTestServer(t)
		ctx := context.Background()
		installModel(t, l, "tiny")
		if _, err := l.Instance(ctx, "vm", ImageModel("tiny"), HardwareModel("micro")); err != nil {
			t.Fatal(err)
		}
		r := readTestRecord(t, l, "vm")
		if r.BaseFormat != "qcow2" || r.DiskFormat != "qcow2" || !r.Overlay {
			t.Fatalf("record: overlay %v, disk %s, base %s", r.Overlay, r.DiskFormat, r.BaseFormat)
		}
	})

	t.Run("a record of an older vmfest", func(t *testing.T) {
		l := newTestServer(t)
		ctx := context.Background()
		disk := rawDisk(t, filepath.Join(l.Home(), "old.raw"), 0o444)
		if _, err := l.Instance(ctx, "old", ImageSpec(spec.Image{Location: disk, Immutable: true}), HardwareModel("micro")); err != nil {
			t.Fatal(err)
		}
		r := readTestRecord(t, l, "old")
		r.BaseFormat = "" // older records have none
		writeRecord(l.home.MachinePath("old"), r)
		d, err := readTestRecord(t, l, "old").driverDisk(l.home.MachinePath("old"))
		if err != nil || d.BackingFormat != "raw" {
			t.Fatalf("disk = %+v, %v; want the base format the overlay's header holds", d, err)
		}
	})
}

// blockNodes lists the block nodes the machine's QEMU has open, as
// "driver file".
func blockNodes(ctx context.Context, t *testing.T, l *Local, name string) []string {
	t.Helper()
	out, err := qemu.RunQMP(ctx, filepath.Join(l.home.MachinePath(name), qemu.QMPSocket), "query-named-block-nodes", map[string]any{"flat": true})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []struct {
		Drv  string `json:"drv"`
		File string `json:"file"`
	}
	if err := json.Unmarshal(out, &nodes); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range nodes {
		got = append(got, n.Drv+" "+n.File)
	}
	return got
}

// hostMemTotal reads MemTotal in MiB.
func hostMemTotal(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	var kib int
	for _, line := range strings.Split(string(data), "\n") {
		if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kib); err == nil {
			return kib / 1024
		}
	}
	t.Fatal("no MemTotal in /proc/meminfo")
	return 0
}

// TestMemoryAgainstTheHost: a machine asking for more memory than the host
// has is refused at create, naming memory-size; at start, memory QEMU cannot
// allocate is the host's limit (ErrUnavailable), not an internal error.
func TestMemoryAgainstTheHost(t *testing.T) {
	l := newTestServer(t)
	ctx := ctxTimeout(t, time.Minute)
	total := hostMemTotal(t)
	if total+1 > spec.MaxMemorySize {
		t.Skipf("the host has %d MiB, more than a spec may ask", total)
	}
	h := spec.BuiltinHardware()["micro"]
	h.MemorySize = total + 1
	_, err := l.Instance(ctx, "big", ImageSpec(blankImage(t, l.Home())), HardwareSpec(h))
	want := fmt.Sprintf("memory-size: %d MiB is more than the host's %d MiB (MemTotal)", total+1, total)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want ErrInvalid saying %q", err, want)
	}
	h.MemorySize = total
	if _, err := l.Instance(ctx, "all", ImageSpec(blankImage(t, l.Home())), HardwareSpec(h)); err != nil {
		t.Fatalf("as much as the host has: %v", err)
	}

	// The host's memory went (or the record says more than it has).
	m, err := l.Instance(ctx, "shrunk", ImageSpec(blankImage(t, l.Home())), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	r := readTestRecord(t, l, "shrunk")
	r.Hardware.MemorySize = spec.MaxMemorySize
	writeRecord(l.home.MachinePath("shrunk"), r)
	err = m.Start(ctx)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "memory-size") || !strings.Contains(err.Error(), fmt.Sprint(spec.MaxMemorySize)) {
		t.Fatalf("err = %v, want ErrUnavailable naming memory-size", err)
	}
	if st, _ := m.State(ctx); st != PoweredOff {
		t.Fatalf("state = %s", st)
	}
}

// TestNewLocalMakesModelsPrivate: models installed by an older vmfest
// (readable by every local user) are made private when a server opens the
// state directory, and a machine still starts from one.
func TestNewLocalMakesModelsPrivate(t *testing.T) {
	l := newTestServer(t)
	ctx := ctxTimeout(t, time.Minute)
	installModel(t, l, "old")
	dir := l.images.Dir("old")
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Join(dir, store.ModelDiskFile), 0o444)
	os.Chmod(filepath.Join(dir, store.ModelFile), 0o644)
	l2, err := NewLocal(l.cfg)
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{
		dir:                                     0o700,
		filepath.Join(dir, store.ModelDiskFile): 0o400,
		filepath.Join(dir, store.ModelFile):     0o600,
	} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, %v; want %v", path, fi.Mode().Perm(), err, mode)
		}
	}
	m, err := l2.Instance(ctx, "vm", ImageModel("old"), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	nodes := blockNodes(ctx, t, l2, "vm")
	want := []string{"qcow2 " + filepath.Join(dir, store.ModelDiskFile)}
	if !containsAll(nodes, want) {
		t.Fatalf("QEMU opened %v, want %v among them", nodes, want)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// TestDiskCheckedAtCreate: a caller's image (a local spec, an --allow-path
// file) that would make QEMU open another file (a backing file, an
// external data file) is refused before any machine uses it, immutable or
// not, as bad input naming the image.
func TestDiskCheckedAtCreate(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	outside := t.TempDir()
	secret := rawDisk(t, filepath.Join(outside, "secret.raw"), 0o600)
	write := func(name string, data []byte) string {
		path := filepath.Join(l.Home(), name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	backed := write("backed.qcow2", qcow2Bytes(t, "-F", "raw", "-b", secret))
	dataFile := write("datafile.qcow2", qcow2Bytes(t, "-o", "data_file="+filepath.Join(outside, "data.raw")))
	zeros := rawDisk(t, filepath.Join(l.Home(), "zeros.img"), 0o644)
	tests := []struct {
		name  string
		image spec.Image
		want  string
	}{
		{"backing file, immutable", spec.Image{Location: backed, Immutable: true}, "backing"},
		{"backing file, mutable", spec.Image{Location: backed}, "backing"},
		{"backing file, format given", spec.Image{Location: backed, Immutable: true, Format: "qcow2"}, "backing"},
		{"external data file", spec.Image{Location: dataFile, Immutable: true}, "data"},
		{"external data file, mutable", spec.Image{Location: dataFile}, "data"},
		{"raw given as qcow2", spec.Image{Location: zeros, Immutable: true, Format: "qcow2"}, "qcow2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := l.Instance(ctx, "vm", ImageSpec(tt.image), HardwareModel("micro"))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "image location "+tt.image.Location) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrInvalid naming the image location and %q", err, tt.want)
			}
			if _, err := l.FindMachine(ctx, "vm"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("the refused machine exists: %v", err)
			}
		})
	}
	entries, _ := os.ReadDir(l.home.MachinesPath())
	if len(entries) != 0 {
		t.Fatalf("machines dir holds %v", entries)
	}
}

// TestDiskCheckedAtStart: an image that changed after its machine was made
// (its file replaced by one naming a backing file) is checked again at
// start and refused; QEMU is not run.
func TestDiskCheckedAtStart(t *testing.T) {
	secret := rawDisk(t, filepath.Join(t.TempDir(), "secret.raw"), 0o600)
	evil := qcow2Bytes(t, "-F", "raw", "-b", secret)
	for _, immutable := range []bool{true, false} {
		t.Run(fmt.Sprintf("immutable %v", immutable), func(t *testing.T) {
			l := newTestServer(t)
			ctx := ctxTimeout(t, time.Minute)
			disk := filepath.Join(l.Home(), "d.qcow2")
			os.WriteFile(disk, qcow2Bytes(t), 0o644)
			m, err := l.Instance(ctx, "vm", ImageSpec(spec.Image{Location: disk, Immutable: immutable}), HardwareModel("micro"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(disk, evil, 0o644); err != nil {
				t.Fatal(err)
			}
			err = m.Start(ctx)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "image location "+disk) || !strings.Contains(err.Error(), "backing") {
				t.Fatalf("err = %v, want ErrInvalid naming the image location and its backing file", err)
			}
			if st, _ := m.State(ctx); st != PoweredOff {
				t.Fatalf("state = %s", st)
			}
		})
	}
}
