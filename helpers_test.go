package vmfest

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

// newTestServer returns a Local server over a fresh state directory (short,
// for Unix socket paths). Cleanup kills every QEMU it started, takes its
// networks' bridges and dnsmasq down and removes the directory, whether the
// test passed or not.
func newTestServer(t *testing.T) *Local {
	t.Helper()
	home, err := os.MkdirTemp("", "vmf")
	if err != nil {
		t.Fatal(err)
	}
	l, err := NewLocal(Config{Home: home, Accel: os.Getenv("VMFEST_ACCEL"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		testutil.KillMachines(home)
		downNetworks(l) // bridges and dnsmasq (networks_test.go)
		os.RemoveAll(home)
	})
	return l
}

// blankImage writes a small immutable (read-only) raw disk with no OS:
// enough for QEMU to run, not for a guest to boot.
func blankImage(t *testing.T, dir string) spec.Image {
	t.Helper()
	return testutil.BlankImage(t, dir, "blank.raw")
}

// tinyImage returns the spec of the tiny guest built by `make image`
// (build/vmfest-tiny.meta, or $VMFEST_TEST_IMAGE). Tests that boot a real
// guest are skipped with -short and fail when the image is missing.
func tinyImage(t *testing.T) spec.Image {
	t.Helper()
	return testutil.TinyImage(t)
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// bootTiny creates a machine from the tiny image and the given hardware,
// starts it and waits for its guest agent; on failure it prints the
// machine's console.
func bootTiny(ctx context.Context, t *testing.T, srv Server, name string, image spec.Image, hw Hardware) Machine {
	t.Helper()
	m, err := srv.Instance(ctx, name, ImageSpec(image), hw)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		log, _ := m.ConsoleLog(ctx)
		t.Fatalf("%s: %v\nconsole:\n%s", name, err, log)
	}
	return m
}

// crashQEMU kills the machine's QEMU with SIGKILL, waits until it is gone
// and checks that the machine reads as aborted.
func crashQEMU(ctx context.Context, t *testing.T, l *Local, m Machine) {
	t.Helper()
	dir := l.home.MachinePath(m.Name())
	if err := qemu.Kill(dir); err != nil {
		t.Fatal(err)
	}
	if err := qemu.WaitExit(ctx, dir); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, Aborted)
}

// leaseIP waits, within 60 s, until the address of m's NIC in slot is
// confirmed by dnsmasq's lease, and returns it. The guest's agent can
// report the address a moment before dnsmasq writes its lease file, and IP
// answers from the first source that knows it.
func leaseIP(ctx context.Context, t *testing.T, m Machine, slot int) Address {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		a, err := m.IP(ctx, slot)
		if err != nil {
			t.Fatalf("address of network[%d]: %v", slot, err)
		}
		if a.Source == SourceLease {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("address of network[%d] = %+v: not confirmed by a lease within 60 s", slot, a)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
