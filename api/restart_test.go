package api

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
)

// buildVmfest builds the vmfest command into a temporary directory.
func buildVmfest(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "vmfest")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go") // go test's own toolchain
	}
	out, err := exec.Command(goTool, "build", "-o", bin, "github.com/vmfest/vmfest/cmd/vmfest").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startServe runs `vmfest serve` as a subprocess and waits until its
// socket answers. Cleanup kills it (by its pid) if it still runs.
func startServe(t *testing.T, bin, home string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--home", home}, args...)...)
	cmd.Env = append(os.Environ(), "VMFEST_SERVER=")
	log, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		log.Close()
	})
	sock := filepath.Join(home, SocketFile)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return cmd
		}
		select {
		case <-exited:
			data, _ := os.ReadFile(log.Name())
			t.Fatalf("vmfest serve exited:\n%s", data)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestServerKilled: a `vmfest serve` killed with SIGKILL leaves its
// machines running; a new one (on the stale socket) lists and drives them.
func TestServerKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds vmfest and runs QEMU")
	}
	bin := buildVmfest(t)
	e := newEnv(t) // its state directory, blank image and cleanup
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sock := filepath.Join(e.home, SocketFile)

	first := startServe(t, bin, e.home, "--allow-path", e.allowed)
	r, err := vmfest.Connect("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	m, err := r.Instance(ctx, "survivor", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil || info.State != vmfest.Running || info.PID == 0 {
		t.Fatalf("before the kill: %+v, %v", info, err)
	}

	if err := first.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	for {
		if _, err := r.Machines(ctx); err != nil {
			if !strings.Contains(err.Error(), "vmfest serve") {
				t.Errorf("error with the server down does not say what to do: %v", err)
			}
			break
		}
		time.Sleep(10 * time.Millisecond) // the kill is asynchronous
	}
	local, err := e.local.FindMachine(ctx, "survivor")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := local.State(ctx); err != nil || st != vmfest.Running {
		t.Fatalf("with the server killed the machine is %s, %v", st, err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("the killed server's socket should be left behind: %v", err)
	}

	startServe(t, bin, e.home, "--allow-path", e.allowed)
	ms, err := r.Machines(ctx)
	if err != nil || len(ms) != 1 || ms[0].Name() != "survivor" {
		t.Fatalf("after the restart: %v, %v", ms, err)
	}
	m = ms[0]
	info2, err := m.Info(ctx)
	if err != nil || info2.State != vmfest.Running || info2.PID != info.PID {
		t.Fatalf("after the restart: %+v, %v (pid was %d)", info2, err, info.PID)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
}
