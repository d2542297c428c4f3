// Package cloud_test boots vmfest machines from a real Debian cloud image
// (cloud-init, qemu-guest-agent, OpenSSH; scripts/build-cloud-image.sh) and
// checks that cloud-init honours what vmfest seeds. It runs only when
// VMFEST_CLOUD_IMAGE names the image's .meta (make test-cloud sets it), as
// root, inside network and PID namespaces of its own.
package cloud_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/internal/netnstest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// imageEnv names the cloud image's metadata file.
const imageEnv = "VMFEST_CLOUD_IMAGE"

func TestMain(m *testing.M) {
	if code, done := netnstest.Wrap(); done {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// cloudImage returns the cloud image's spec, its location made absolute,
// or skips the test when VMFEST_CLOUD_IMAGE is unset.
func cloudImage(t *testing.T) spec.Image {
	t.Helper()
	meta := os.Getenv(imageEnv)
	if meta == "" {
		t.Skipf("%s is not set: run make test-cloud", imageEnv)
	}
	if testing.Short() {
		t.Skip("boots a real distribution; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs in network and PID namespaces of its own")
	}
	data, err := os.ReadFile(meta)
	if err != nil {
		t.Fatalf("%s: %v", imageEnv, err)
	}
	im, err := spec.ParseImage(data)
	if err != nil {
		t.Fatalf("%s (%s): %v", imageEnv, meta, err)
	}
	if !filepath.IsAbs(im.Location) {
		im.Location = filepath.Join(filepath.Dir(meta), im.Location)
	}
	if abs, err := filepath.Abs(im.Location); err == nil {
		im.Location = abs
	}
	return im
}

// newLocal returns a Local over a fresh state directory. Cleanup kills
// every QEMU it started, removes its networks and the directory, whether
// the test passed or not.
func newLocal(t *testing.T) *vmfest.Local {
	t.Helper()
	home, err := os.MkdirTemp("", "vmfc") // short: Unix socket paths live under it
	if err != nil {
		t.Fatal(err)
	}
	l, err := vmfest.NewLocal(vmfest.Config{Home: home, Accel: os.Getenv("VMFEST_ACCEL"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		os.RemoveAll(home)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		testutil.KillMachines(home)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if nets, err := l.Networks(ctx); err == nil {
			for _, n := range nets {
				l.RemoveNetwork(ctx, n.Name)
			}
		}
		os.RemoveAll(home)
	})
	return l
}

// run runs cmd on m over vmfest's SSH as the image's user and returns its
// standard output, failing the test on a non-zero exit.
func run(ctx context.Context, t *testing.T, l *vmfest.Local, m vmfest.Machine, cmd ...string) string {
	t.Helper()
	signer, _, err := l.SSHKey()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code, err := vmfest.SSH(ctx, m, signer, vmfest.SSHOptions{Command: cmd, Stdout: &stdout, Stderr: &stderr, ConnectTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatalf("ssh %s: %v", strings.Join(cmd, " "), err)
	}
	if code != 0 {
		t.Fatalf("ssh %s: exit status %d\nstdout: %s\nstderr: %s", strings.Join(cmd, " "), code, &stdout, &stderr)
	}
	return strings.TrimSpace(stdout.String())
}

// agentHostName asks the guest agent for the guest's host name, retrying
// until it equals want or ctx ends; it returns the last name read.
func agentHostName(ctx context.Context, home, name, want string) (string, error) {
	sock := filepath.Join(home, store.MachinesDir, name, store.QGASocket)
	var got string
	var last error
	for {
		got, last = func() (string, error) {
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			a, err := qemu.DialAgent(actx, sock)
			if err != nil {
				return "", err
			}
			defer a.Close()
			raw, err := a.Execute(actx, "guest-get-host-name", nil)
			if err != nil {
				return "", err
			}
			var r struct {
				HostName string `json:"host-name"`
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				return "", fmt.Errorf("guest-get-host-name: %w", err)
			}
			return r.HostName, nil
		}()
		if last == nil && got == want {
			return got, nil
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return got, last
		case <-time.After(time.Second):
		}
	}
}

// TestCloudInit boots the cloud image on micro hardware (host-only NIC 0,
// NAT NIC 1) and checks what cloud-init made of vmfest's NoCloud seed: the
// host name, the image's user with vmfest's key, and NIC 0 configured by
// DHCP with the address vmfest reserved.
func TestCloudInit(t *testing.T) {
	image := cloudImage(t)
	if !netnstest.Enter(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	l := newLocal(t)
	const name = "cloudy"

	m, err := l.Instance(ctx, name, vmfest.ImageSpec(image), vmfest.HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	console := func() string {
		b, _ := m.ConsoleLog(context.Background())
		return string(b)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console:\n%s", console())
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		m.PowerDown(cctx)
		m.Destroy(cctx)
	})

	start := time.Now()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	ready := time.Since(start)

	if got := run(ctx, t, l, m, "cloud-init", "status", "--wait"); !strings.Contains(got, "status: done") {
		t.Errorf("cloud-init status --wait = %q, want status: done", got)
	}
	done := time.Since(start)
	t.Logf("boot: guest agent ready after %s, cloud-init done after %s (accel %s)", ready.Round(100*time.Millisecond), done.Round(100*time.Millisecond), accel(ctx, m))

	if got := run(ctx, t, l, m, "id", "-un"); got != image.Username {
		t.Errorf("id -un = %q, want the image's user %q", got, image.Username)
	}
	if got := run(ctx, t, l, m, "hostname"); got != name {
		t.Errorf("hostname over ssh = %q, want the machine name %q", got, name)
	}
	hctx, hcancel := context.WithTimeout(ctx, 30*time.Second)
	got, err := agentHostName(hctx, l.Home(), name, name)
	hcancel()
	if err != nil || got != name {
		t.Errorf("guest-get-host-name = %q (%v), want the machine name %q", got, err, name)
	}

	info, err := m.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Networks) == 0 || info.Networks[0].IP == "" {
		t.Fatalf("NIC 0 has no reserved host-only address: %+v", info.Networks)
	}
	addr, err := m.IP(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if addr.IP != info.Networks[0].IP || addr.Source != "lease" {
		t.Errorf("IP(0) = %+v, want the reserved address %s from the lease", addr, info.Networks[0].IP)
	}
	// The guest itself holds that address on the NIC with NIC 0's MAC:
	// cloud-init matched network-config by MAC and networkd ran DHCP.
	if got := run(ctx, t, l, m, "ip", "-4", "-o", "addr", "show"); !strings.Contains(got, " "+addr.IP+"/") {
		t.Errorf("the guest's addresses lack %s:\n%s", addr.IP, got)
	}

	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
}

func accel(ctx context.Context, m vmfest.Machine) string {
	info, err := m.Info(ctx)
	if err != nil {
		return "?"
	}
	return info.Accel
}
