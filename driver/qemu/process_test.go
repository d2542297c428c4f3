package qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest/spec"
)

// startBlank starts a real QEMU with a blank disk (no guest OS: the BIOS
// finds nothing to boot, which is enough to drive QEMU's own lifecycle).
func startBlank(t *testing.T) Config {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmq")
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "blank.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Name: "blank", Dir: dir, Hardware: hw(func(h *spec.Hardware) {
		h.MemorySize = 64
		h.Network = []spec.NIC{{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterVirtio, MACAddress: "52:54:00:00:00:01"}}
	}), Disk: Disk{Path: disk, Format: "raw"}, Accel: AccelTCG}
	t.Cleanup(func() {
		Kill(dir)
		WaitExit(context.Background(), dir)
		os.RemoveAll(dir)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Start(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestProcessLifecycle(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 is needed: apt-get install qemu-system-x86")
	}
	ctx := context.Background()
	cfg := startBlank(t)
	expect := func(want State) {
		t.Helper()
		got, err := Inspect(ctx, cfg.Dir)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("state = %s, want %s", got, want)
		}
	}
	expect(Running)
	pid, alive, err := PID(cfg.Dir)
	if err != nil || !alive || pid <= 0 {
		t.Fatalf("PID = %d %v %v", pid, alive, err)
	}
	if _, err := RunQMP(ctx, cfg.Path(QMPSocket), "stop", nil); err != nil {
		t.Fatal(err)
	}
	expect(Paused)
	if _, err := RunQMP(ctx, cfg.Path(QMPSocket), "cont", nil); err != nil {
		t.Fatal(err)
	}
	expect(Running)
	if err := Clean(context.Background(), cfg.Dir); err == nil {
		t.Fatal("Clean succeeded while QEMU runs")
	}

	// Killed: the pidfile stays behind unlocked, which reads as aborted.
	if err := Kill(cfg.Dir); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := WaitExit(wctx, cfg.Dir); err != nil {
		t.Fatal(err)
	}
	expect(Aborted)
	if err := Clean(context.Background(), cfg.Dir); err != nil {
		t.Fatal(err)
	}
	expect(PoweredOff)

	// A clean quit removes the pidfile: powered off.
	if err := Start(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	expect(Running)
	if _, err := RunQMP(ctx, cfg.Path(QMPSocket), "quit", nil); err != nil {
		t.Fatal(err)
	}
	if err := WaitExit(wctx, cfg.Dir); err != nil {
		t.Fatal(err)
	}
	expect(PoweredOff)
}

func TestStartFailureReportsQEMUError(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Name: "bad", Dir: dir, Hardware: hw(func(h *spec.Hardware) { h.Network = h.Network[1:] }), Disk: Disk{Path: filepath.Join(dir, "missing.qcow2"), Format: "qcow2"}, Accel: AccelTCG}
	err := Start(context.Background(), cfg)
	if err == nil {
		Kill(dir)
		t.Fatal("QEMU started without its disk")
	}
	if st, _ := Inspect(context.Background(), dir); st != PoweredOff {
		t.Fatalf("state after failed start = %s", st)
	}
	t.Log(err)
}

// TestFrozenQEMUIsBounded: a QEMU that stops answering (SIGSTOP) makes
// Inspect fail within its context instead of hanging.
func TestFrozenQEMUIsBounded(t *testing.T) {
	cfg := startBlank(t)
	pid, alive, err := PID(cfg.Dir)
	if err != nil || !alive {
		t.Fatalf("PID: %v %v", alive, err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err = Inspect(ctx, cfg.Dir)
	if err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("err = %v", err)
	}
	syscall.Kill(pid, syscall.SIGCONT)
	if st, err := Inspect(context.Background(), cfg.Dir); err != nil || st != Running {
		t.Fatalf("after SIGCONT: %s %v", st, err)
	}
}

// A killed QEMU counts as exited only once it is a zombie or gone, and a
// process that reuses its pid but is not that QEMU counts as exited too.
func TestExited(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), PIDFile)
	cmd := exec.Command("sh", "-c", "sleep 30", pidfile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	// Until the child has exec'd, its command line is still the test's.
	for deadline := time.Now().Add(30 * time.Second); exited(pid, pidfile); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a running process of the pidfile counts as exited")
		}
	}
	if !exited(pid, filepath.Join(t.TempDir(), PIDFile)) {
		t.Fatal("a process of another pidfile (a reused pid) does not count as exited")
	}
	// A live process whose command line reads empty, as an exiting one's
	// does once its memory is gone but not yet its files (the disks'
	// locks): kthreadd, pid 2, where this PID namespace sees it.
	if c, err := os.ReadFile("/proc/2/cmdline"); err == nil && len(c) == 0 && exited(2, pidfile) {
		t.Fatal("a live process with an empty command line counts as exited")
	}
	// Not reaped yet: a zombie once the kernel is done with it.
	killExited(t, cmd, pidfile)
	cmd.Wait()
	if !exited(pid, pidfile) {
		t.Fatal("a reaped process counts as running")
	}
}

// zombieLeaderEnv makes the test binary a helper of
// TestExitedWaitsForEveryThread: its main thread exits during init and its
// other threads live on, as a killed QEMU's main thread can end before a
// vCPU thread that still holds the disks' locks.
const zombieLeaderEnv = "VMFEST_HELPER_ZOMBIE_LEADER"

func init() {
	if os.Getenv(zombieLeaderEnv) == "" {
		return
	}
	// Package init runs on the process's main thread; exit that thread
	// alone. The runtime's other threads keep the process alive.
	runtime.LockOSThread()
	unix.RawSyscall(unix.SYS_EXIT, 0, 0, 0)
}

// A process whose main thread is a zombie but whose other threads still
// run has not exited: its files are still open.
func TestExitedWaitsForEveryThread(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), PIDFile)
	cmd := exec.Command(os.Args[0], "-test.run=^$", pidfile)
	cmd.Env = append(os.Environ(), zombieLeaderEnv+"=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		if deadState(stat) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the helper's main thread did not exit: %s", stat)
		}
	}
	if exited(pid, pidfile) {
		t.Fatal("a process with a zombie main thread and live threads counts as exited")
	}
	killExited(t, cmd, pidfile)
}

// killExited kills cmd's process and waits, within 30 s, until it counts
// as exited; it does not reap it.
func killExited(t *testing.T, cmd *exec.Cmd, pidfile string) {
	t.Helper()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitExited(ctx, cmd.Process.Pid, pidfile); err != nil {
		t.Fatal(err)
	}
	if !exited(cmd.Process.Pid, pidfile) {
		t.Fatal("waitExited returned before the process exited")
	}
}
