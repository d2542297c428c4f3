package vmfest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/qemu"
)

// These tests boot the real tiny guest (make image) under whatever
// accelerator the host offers (TCG on the build machines).

func expectState(t *testing.T, m Machine, want State) {
	t.Helper()
	got, err := m.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("%s: state = %s, want %s", m.Name(), got, want)
	}
}

// TestGuestAgentNetwork checks the agent's interface report.
func TestGuestAgentNetwork(t *testing.T) {
	image := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 3*time.Minute)
	m := bootTiny(ctx, t, l, "net", image, HardwareModel("micro"))
	info, _ := m.Info(ctx)
	mac := info.HardwareSpec.Network[1].MACAddress // micro: NIC 0 host-only, NIC 1 NAT
	for {
		a, err := qemu.DialAgent(ctx, filepath.Join(l.home.MachinePath("net"), qemu.QGASocket))
		if err != nil {
			t.Fatal(err)
		}
		ifs, err := driver.Interfaces(ctx, a)
		a.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range ifs {
			if strings.EqualFold(i.HWAddress, mac) {
				for _, ip := range i.IPAddresses {
					if ip.Address == "10.0.2.15" {
						return // QEMU's user-mode DHCP gave the NAT address
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no 10.0.2.15 on the NIC %s: %+v", mac, ifs)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// TestConcurrentMachines creates and starts three machines from one image at
// once; each has its own overlay.
func TestConcurrentMachines(t *testing.T) {
	image := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 5*time.Minute)
	names := []string{"c1", "c2", "c3"}
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := l.Instance(ctx, n, ImageSpec(image), HardwareModel("micro"))
			if err == nil {
				err = m.Start(ctx)
			}
			if err == nil {
				err = m.WaitReady(ctx)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	ms, err := l.Machines(ctx)
	if err != nil || len(ms) != 3 {
		t.Fatalf("machines = %v, %v", ms, err)
	}
	disks := map[string]bool{}
	for _, m := range ms {
		info, err := m.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State != Running || info.BaseImage != image.Location {
			t.Fatalf("info = %+v", info)
		}
		disks[info.Disk] = true
	}
	if len(disks) != 3 {
		t.Fatalf("overlays shared: %v", disks)
	}
	for _, m := range ms {
		if err := m.PowerDown(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCrashedQEMU kills QEMU under a running machine: it reads as aborted,
// keeps its disk, and starts again.
func TestCrashedQEMU(t *testing.T) {
	image := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 3*time.Minute)
	m := bootTiny(ctx, t, l, "crash", image, HardwareModel("micro"))
	crashQEMU(ctx, t, l, m)
	// A fresh server (as a new process would be) reads the same truth.
	l2, err := NewLocal(Config{Home: l.Home(), Logger: l.log})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := l2.FindMachine(ctx, "crash")
	if err != nil {
		t.Fatal(err)
	}
	expectState(t, m2, Aborted)
	info, _ := m2.Info(ctx)
	if _, err := os.Stat(info.Disk); err != nil {
		t.Fatalf("disk lost: %v", err)
	}
	if err := m2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestExec runs commands in the tiny guest through its guest agent: exit
// status, both streams and stdin come back as the command's own; a machine
// that does not run, or no command, is refused.
func TestExec(t *testing.T) {
	image := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 3*time.Minute)
	m, err := l.Instance(ctx, "ex", ImageSpec(image), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	var se *StateError
	if _, err := m.Exec(ctx, ExecRequest{Command: []string{"true"}}); !errors.As(err, &se) || se.State != PoweredOff {
		t.Fatalf("exec on a powered-off machine: %v", err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name           string
		req            ExecRequest
		code           int
		stdout, stderr string
	}{
		{"status and streams", ExecRequest{Command: []string{"sh", "-c", "echo out; echo err >&2; exit 7"}}, 7, "out\n", "err\n"},
		{"stdin", ExecRequest{Command: []string{"cat"}, Stdin: []byte("through stdin\n")}, 0, "through stdin\n", ""},
		{"env", ExecRequest{Command: []string{"sh", "-c", "echo $GREETING"}, Env: []string{"GREETING=hello", "PATH=/bin:/usr/bin:/sbin:/usr/sbin"}}, 0, "hello\n", ""},
	} {
		res, err := m.Exec(ctx, c.req)
		if err != nil || res.ExitCode != c.code || string(res.Stdout) != c.stdout || string(res.Stderr) != c.stderr {
			t.Errorf("%s: %+v (%q, %q), %v", c.name, res, res.Stdout, res.Stderr, err)
		}
	}
	if _, err := m.Exec(ctx, ExecRequest{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("exec of nothing: %v", err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
}
