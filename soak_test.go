package vmfest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/spec"
)

// natOnly is hardware whose networking needs no host setup: one NAT NIC.
func natOnly() Hardware {
	h := spec.Hardware{MemorySize: 64, Network: []spec.NIC{{AttachmentType: spec.AttachNAT}}}
	return HardwareSpec(h)
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// qemuProcesses counts QEMU processes (zombies aside) whose command line
// mentions dir.
func qemuProcesses(t *testing.T, dir string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*")
	n := 0
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), dir) {
			continue
		}
		status, _ := os.ReadFile(filepath.Join(p, "status"))
		if strings.Contains(string(status), "State:\tZ") {
			continue
		}
		n++
	}
	return n
}

// TestSoak runs bounded loops of the lifecycle without a guest OS: create →
// start → power-down → destroy, then many create → destroy, and checks that
// nothing is left: no QEMU, no file, no file descriptor.
func TestSoak(t *testing.T) {
	cycles, quick := 10, 1000
	if testing.Short() {
		cycles, quick = 3, 300
	}
	budget := time.Now().Add(3 * time.Minute) // the loops stop early past this
	l := newTestServer(t)
	img := blankImage(t, l.Home())
	ctx := context.Background()
	fds := openFDs(t)

	ran := 0
	for i := 0; i < cycles && time.Now().Before(budget); i++ {
		m, err := l.Instance(ctx, fmt.Sprintf("soak%d", i), ImageSpec(img), natOnly())
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m.PowerDown(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
		ran++
	}
	fast := 0
	for i := 0; i < quick && time.Now().Before(budget); i++ {
		m, err := l.Instance(ctx, "quick", ImageSpec(img), natOnly())
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
		fast++
	}
	t.Logf("%d start/power-down cycles, %d create/destroy cycles", ran, fast)

	if n := qemuProcesses(t, l.Home()); n != 0 {
		t.Errorf("%d QEMU processes left", n)
	}
	entries, _ := os.ReadDir(l.home.MachinesPath())
	if len(entries) != 0 {
		t.Errorf("machines dir holds %d entries", len(entries))
	}
	if now := openFDs(t); now > fds {
		t.Errorf("file descriptors: %d before, %d after", fds, now)
	}
	if ran == 0 || fast == 0 {
		t.Fatal("the soak ran no cycle")
	}
}

func specImage(path string) spec.Image { return spec.Image{Location: path, Immutable: true} }
