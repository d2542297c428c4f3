package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// qemuImgCreate makes a disk with the real qemu-img.
func qemuImgCreate(t testing.TB, path string, args ...string) {
	t.Helper()
	var size []string
	if n := len(args); n > 0 && args[n-1] == "1M" {
		args, size = args[:n-1], args[n-1:]
	}
	argv := append(append(append([]string{"create", "-q"}, args...), path), size...)
	out, err := exec.Command("qemu-img", argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create %v: %v: %s", args, err, out)
	}
}

// patchFile writes b at off in path.
func patchFile(t testing.TB, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// hostileVMDK writes, at path, finding 1 of issue 10: a monolithicSparse
// VMDK made by qemu-img whose header then says capacity 0 and whose
// embedded descriptor names a FLAT extent at extent (absolute or relative).
func hostileVMDK(t testing.TB, path, extent string, sectors int) {
	t.Helper()
	qemuImgCreate(t, path, "-f", "vmdk", "1M")
	patchFile(t, path, 12, make([]byte, 8)) // capacity 0
	desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW %d FLAT \"%s\" 0\n", sectors, extent)
	hdr, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := int64(binary.LittleEndian.Uint64(hdr[28:])) * 512
	size := int(binary.LittleEndian.Uint64(hdr[36:])) * 512
	b := make([]byte, size)
	copy(b, desc)
	patchFile(t, path, off, b)
}

// craftVHDX writes a minimal VHDX (MS-VHDX: file identifier, region
// table, metadata table with file parameters and virtual size); parent
// adds a parent locator item, hasParent sets the file parameters' flag.
func craftVHDX(t testing.TB, path string, vsize uint64, parent, hasParent bool) {
	t.Helper()
	b := craftVHDXBytes(vsize, parent, hasParent)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func craftVHDXBytes(vsize uint64, parent, hasParent bool) []byte {
	const metaOff = 1 << 20
	b := make([]byte, 2<<20)
	copy(b, "vhdxfile")
	rt := b[192<<10:]
	copy(rt, "regi")
	binary.LittleEndian.PutUint32(rt[8:], 1)
	g := msGUID(vhdxRegionMetadata)
	copy(rt[16:], g[:])
	binary.LittleEndian.PutUint64(rt[32:], metaOff)
	binary.LittleEndian.PutUint32(rt[40:], 1<<20)
	mt := b[metaOff:]
	copy(mt, "metadata")
	items := []struct {
		id   string
		data []byte
	}{
		{vhdxFileParameters, append(le32(1<<20), le32(map[bool]uint32{true: 2}[hasParent])...)},
		{vhdxVirtualSize, binary.LittleEndian.AppendUint64(nil, vsize)},
	}
	if parent {
		items = append(items, struct {
			id   string
			data []byte
		}{vhdxParentLocator, make([]byte, 20)})
	}
	binary.LittleEndian.PutUint16(mt[10:], uint16(len(items)))
	for i, it := range items {
		e := mt[32+32*i:]
		g := msGUID(it.id)
		copy(e, g[:])
		off := 64<<10 + 4096*i
		binary.LittleEndian.PutUint32(e[16:], uint32(off))
		binary.LittleEndian.PutUint32(e[20:], uint32(len(it.data)))
		copy(mt[off:], it.data)
	}
	return b
}

func TestInspectFile(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed")
	}
	dir := t.TempDir()
	canary := filepath.Join(dir, "canary")
	if err := os.WriteFile(canary, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	tests := []struct {
		name, format string
		make         func(t testing.TB, path string)
		want         string // format, or "" when refused
		wantErr      error
	}{
		{"qcow2", "", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "qcow2", "1M") }, "qcow2", nil},
		{"qcow2 v2", "qcow2", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "qcow2", "-o", "compat=0.10", "1M") }, "qcow2", nil},
		{"raw", "", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "raw", "1M") }, "raw", nil},
		{"vmdk", "", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "vmdk", "1M") }, "vmdk", nil},
		{"vmdk streamOptimized", "vmdk", func(t testing.TB, f string) {
			qemuImgCreate(t, f, "-f", "vmdk", "-o", "subformat=streamOptimized", "1M")
		}, "vmdk", nil},
		{"vdi", "", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "vdi", "1M") }, "vdi", nil},
		{"vdi fixed", "", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "vdi", "-o", "static=on", "1M") }, "vdi", nil},
		{"vpc", "", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "vpc", "1M") }, "vpc", nil},
		{"vpc fixed", "", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "vpc", "-o", "subformat=fixed", "1M") }, "vpc", nil},
		{"vhdx", "", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "vhdx", "1M") }, "vhdx", nil},
		{"vhdx crafted", "", func(t testing.TB, f string) { craftVHDX(t, f, 1<<20, false, false) }, "vhdx", nil},

		{"qcow2 backing file", "", func(t testing.TB, f string) {
			qemuImgCreate(t, canary+".qcow2", "-f", "qcow2", "1M")
			qemuImgCreate(t, f, "-f", "qcow2", "-b", canary+".qcow2", "-F", "qcow2")
		}, "", ErrNotSelfContained},
		{"qcow2 data file", "", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "qcow2", "-o", "data_file="+canary, "1M") }, "", ErrNotSelfContained},
		{"qcow2 unknown incompatible bit", "", func(t testing.TB, f string) {
			qemuImgCreate(t, f, "-f", "qcow2", "1M")
			patchFile(t, f, 72, binary.BigEndian.AppendUint64(nil, 1<<40))
		}, "", ErrCorrupt},
		{"qcow2 encrypted", "", func(t testing.TB, f string) {
			qemuImgCreate(t, f, "-f", "qcow2", "1M")
			patchFile(t, f, 32, be32(1))
		}, "", ErrNotDiskImage},
		{"vmdk flat extent absolute", "", func(t testing.TB, f string) { hostileVMDK(t, f, canary, 8) }, "", ErrNotSelfContained},
		{"vmdk flat extent relative", "", func(t testing.TB, f string) { hostileVMDK(t, f, "../"+filepath.Base(dir)+"/canary", 8) }, "", ErrNotSelfContained},
		{"vmdk descriptor file", "", func(t testing.TB, f string) {
			qemuImgCreate(t, f, "-f", "vmdk", "-o", "subformat=monolithicFlat", "1M")
		}, "", ErrNotSelfContained},
		{"vmdk cowd", "", func(t testing.TB, f string) { os.WriteFile(f, append([]byte("COWD"), make([]byte, 2044)...), 0o600) }, "", ErrNotSelfContained},
		{"vdi differencing", "", func(t testing.TB, f string) {
			qemuImgCreate(t, f, "-f", "vdi", "1M")
			patchFile(t, f, 0x4c, le32(4))
		}, "", ErrNotSelfContained},
		{"vpc differencing", "", func(t testing.TB, f string) {
			qemuImgCreate(t, f, "-f", "vpc", "1M")
			fi, _ := os.Stat(f)
			patchFile(t, f, fi.Size()-512+60, be32(4))
			patchFile(t, f, 60, be32(4))
		}, "", ErrNotSelfContained},
		{"vhdx parent locator", "", func(t testing.TB, f string) { craftVHDX(t, f, 1<<20, true, false) }, "", ErrNotSelfContained},
		{"vhdx has parent", "", func(t testing.TB, f string) { craftVHDX(t, f, 1<<20, false, true) }, "", ErrNotSelfContained},
		{"raw with a qcow2 header naming a backing file", "", func(t testing.TB, f string) {
			qemuImgCreate(t, f, "-f", "qcow2", "-b", canary, "-F", "raw")
			os.Truncate(f, 1<<20)
		}, "", ErrNotSelfContained},
		{"given as qcow2, is raw", "qcow2", func(t testing.TB, f string) { qemuImgCreate(t, f, "-f", "raw", "1M") }, "", ErrNotDiskImage},
		{"text", "", func(t testing.TB, f string) { os.WriteFile(f, []byte("<html>hello</html>"), 0o600) }, "", ErrNotDiskImage},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := p(fmt.Sprintf("disk%d", i))
			tc.make(t, f)
			got, err := InspectFile(f, tc.format)
			if tc.want == "" {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("InspectFile = %+v, %v; want an error wrapping %v", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("InspectFile: %v", err)
			}
			if got.Format != tc.want || got.VirtualSize < 1<<20 || got.VirtualSize > 1<<20+64<<10 { // vpc rounds up to its geometry
				t.Fatalf("InspectFile = %+v; want %s of 1 MiB", got, tc.want)
			}
		})
	}
}

func TestCheckMachineDisk(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed")
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		format string
		ok     bool
	}{{"qcow2", true}, {"raw", true}, {"vmdk", false}, {"vdi", false}} {
		t.Run(tc.format, func(t *testing.T) {
			f := filepath.Join(dir, tc.format)
			qemuImgCreate(t, f, "-f", tc.format, "1M")
			_, err := CheckMachineDisk(f, "")
			if (err == nil) != tc.ok {
				t.Fatalf("CheckMachineDisk(%s) = %v; want ok=%v", tc.format, err, tc.ok)
			}
		})
	}
}

// FuzzInspect: the native inspector never panics, reads a bounded amount
// whatever the headers claim, and every disk it accepts has a format and
// a size in range.
func FuzzInspect(f *testing.F) {
	if _, err := exec.LookPath("qemu-img"); err == nil {
		c := newCanaryDir(f)
		dir := c.dir
		seeds := map[string][]string{
			"qcow2": {"-f", "qcow2", "1M"}, "qcow2-v2": {"-f", "qcow2", "-o", "compat=0.10", "1M"},
			"vmdk": {"-f", "vmdk", "1M"}, "vmdk-stream": {"-f", "vmdk", "-o", "subformat=streamOptimized", "1M"},
			"vdi": {"-f", "vdi", "1M"}, "vpc": {"-f", "vpc", "1M"}, "vpc-fixed": {"-f", "vpc", "-o", "subformat=fixed", "1M"},
		}
		for name, args := range seeds {
			p := filepath.Join(dir, name)
			qemuImgCreate(f, p, args...)
			addFileSeed(f, p)
		}
		for i, h := range hostileImages() {
			p := filepath.Join(dir, fmt.Sprintf("hostile-%d", i))
			h.make(f, c, p)
			addFileSeed(f, p)
		}
	}
	f.Add(craftVHDXBytes(1<<20, false, false), "")
	f.Add(craftVHDXBytes(1<<20, true, false), "vhdx")
	f.Add(make([]byte, 4096), "raw")
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"), "")
	f.Add([]byte("KDMV\x01\x00\x00\x00"), "vmdk")
	f.Add([]byte("# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\nRW 1 FLAT \"/etc/shadow\" 0\n"), "")
	f.Fuzz(func(t *testing.T, data []byte, format string) {
		in, err := inspectReader(bytes.NewReader(data), int64(len(data)), format)
		if err != nil {
			if !errors.Is(err, ErrNotDiskImage) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotSelfContained) {
				t.Fatalf("an error of no known kind: %v", err)
			}
			return
		}
		if in.Format == "" || in.VirtualSize < 0 || in.VirtualSize > maxVirtualSize {
			t.Fatalf("accepted %+v", in)
		}
		if format != "" && in.Format != format {
			t.Fatalf("asked for %s, accepted as %s", format, in.Format)
		}
	})
}

// addFileSeed adds a disk file's bytes (its first 2 MiB) as a seed, sniffed.
func addFileSeed(f *testing.F, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b[:min(len(b), 2<<20)], "")
}
