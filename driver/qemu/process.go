package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest/driver"
)

// State is a machine's run state (driver.State).
type State = driver.State

// The states a machine can be in.
const (
	PoweredOff = driver.PoweredOff
	Running    = driver.Running
	Paused     = driver.Paused
	Stopping   = driver.Stopping
	Aborted    = driver.Aborted
)

// PID reports the QEMU process of the machine directory dir. QEMU holds a
// lock on its pidfile while it runs and removes the file when it exits
// cleanly, so: no pidfile means no QEMU and a clean end; a pidfile nobody
// locks means QEMU died without cleaning up (aborted); a locked pidfile
// gives the live pid. This reads the truth from any process and is immune
// to pid reuse and to zombies.
func PID(dir string) (pid int, alive bool, err error) {
	path := Config{Dir: dir}.Path(PIDFile)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read pidfile: %w", err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil {
		return 0, false, fmt.Errorf("check pidfile lock: %w", err)
	}
	data, _ := os.ReadFile(path)
	pid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	if lk.Type == unix.F_UNLCK {
		return pid, false, nil
	}
	return int(lk.Pid), true, nil
}

// Inspect derives the state of the machine in dir from its pidfile and QMP.
func Inspect(ctx context.Context, dir string) (State, error) {
	_, alive, err := PID(dir)
	if err != nil {
		return "", err
	}
	pidfile := Config{Dir: dir}.Path(PIDFile)
	if !alive {
		if _, err := os.Stat(pidfile); err == nil {
			return Aborted, nil
		}
		return PoweredOff, nil
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := QueryStatus(qctx, Config{Dir: dir}.Path(QMPSocket))
	if err != nil {
		// QEMU exited between the pid check and the query?
		if _, alive2, _ := PID(dir); !alive2 {
			return Inspect(ctx, dir)
		}
		return "", fmt.Errorf("QEMU is running but its QMP socket does not answer: %w", err)
	}
	switch st.Status {
	case "running":
		return Running, nil
	case "inmigrate", "postmigrate":
		// Loading a saved state, or holding one it has written out.
		return driver.Saved, nil
	case "shutdown":
		return Stopping, nil
	case "internal-error", "guest-panicked", "io-error":
		return Aborted, nil
	default: // paused, prelaunch, suspended, debug, inmigrate, ...
		return Paused, nil
	}
}

// Start launches QEMU for cfg and returns once QEMU has daemonized, i.e.
// the machine is running and its QMP socket listens. ctx bounds the launch,
// never the machine's life. Leftovers of an earlier run (a stale pidfile or
// sockets) must have been removed by the caller (see Clean).
func Start(ctx context.Context, cfg Config) error {
	args, err := cfg.Args()
	if err != nil {
		return err
	}
	if err := resetConsole(ctx, cfg.Dir); err != nil {
		return fmt.Errorf("start QEMU: %w", err)
	}
	logf, err := os.OpenFile(cfg.Path(LogFile), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("start QEMU: %w", err)
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, cfg.binary(), args...)
	cmd.Dir = cfg.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cfg.Incoming != nil {
		// Descriptor 3 in QEMU; the daemonized QEMU inherits it through
		// its fork and reads the migration stream from it.
		cmd.ExtraFiles = []*os.File{cfg.Incoming}
	}
	if err := cmd.Run(); err != nil {
		msg, _ := os.ReadFile(cfg.Path(LogFile))
		msg = bytes.TrimSpace(msg)
		if len(msg) > 0 {
			return fmt.Errorf("start QEMU: %w: %s", err, lastLines(string(msg), 5))
		}
		return fmt.Errorf("start QEMU: %w", err)
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// Clean removes what a dead QEMU left in dir: the pidfile and sockets. It
// refuses while QEMU runs. A QEMU that was killed lets go of its pidfile's
// lock a moment before it has closed its disks (the kernel closes a dying
// process's files one by one), so Clean first waits, bounded by ctx, until
// that process has finished exiting: a start right after a crash must not
// find the disk still locked.
func Clean(ctx context.Context, dir string) error {
	if _, alive, err := PID(dir); err != nil {
		return err
	} else if alive {
		return errors.New("QEMU is still running")
	}
	if err := Settle(ctx, dir); err != nil {
		return err
	}
	c := Config{Dir: dir}
	var errs []error
	for _, name := range []string{PIDFile, QMPSocket, QGASocket} {
		if err := os.Remove(c.Path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Settle waits, bounded by ctx, until the last QEMU of dir, which no
// longer holds its pidfile's lock, has finished exiting, so its disks'
// locks are gone too (see Clean): qemu-img on the disk of a machine whose
// QEMU was just killed would otherwise fail to lock it. It returns at once
// when no QEMU ran or one still runs.
func Settle(ctx context.Context, dir string) error {
	pid, alive, err := PID(dir)
	if err != nil || alive || pid <= 0 {
		return err
	}
	return waitExited(ctx, pid, Config{Dir: dir}.Path(PIDFile))
}

// Kill sends SIGKILL to the machine's QEMU, if one runs.
func Kill(dir string) error {
	pid, alive, err := PID(dir)
	if err != nil || !alive {
		return err
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill QEMU %d: %w", pid, err)
	}
	return nil
}

// WaitExit waits until the machine's QEMU has exited or ctx is done,
// draining the console ring meanwhile.
func WaitExit(ctx context.Context, dir string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var drained time.Time
	for {
		_, alive, err := PID(dir)
		if err != nil {
			return err
		}
		if !alive {
			return nil
		}
		// Keep the console drained to its last lines while QEMU runs.
		if time.Since(drained) >= 200*time.Millisecond {
			dctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
			DrainConsole(dctx, dir)
			cancel()
			drained = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// waitExited waits until process pid, a QEMU that wrote pidfile, has
// finished exiting: gone, a zombie (its files all closed), or a process that
// is not that QEMU at all (its pid reused). It gives up quietly after 10 s
// (the caller's next step then reports whatever is still held) and returns
// ctx's error if ctx ends first.
func waitExited(ctx context.Context, pid int, pidfile string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if exited(pid, pidfile) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the last QEMU (pid %d) to exit: %w", pid, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// exited says process pid is no longer a live QEMU of pidfile.
func exited(pid int, pidfile string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return true // gone (or not visible from this PID namespace)
	}
	if len(cmdline) > 0 && !bytes.Contains(cmdline, []byte(pidfile)) {
		return true // the pid now belongs to another program
	}
	// An exiting process lets go of its memory (its command line then
	// reads empty) before it closes its files, and its files, the disks'
	// locks among them, close only when its last thread is done. A
	// killed QEMU's main thread can be a zombie while a vCPU or I/O
	// thread still holds them. So: exited once every thread is a zombie
	// or gone. (A kernel thread that took the pid reads empty and lives
	// on; waitExited's deadline ends that.)
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return true
	}
	for _, task := range tasks {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			continue // this thread is gone
		}
		if !deadState(stat) {
			return false
		}
	}
	return true
}

// deadState says a /proc stat line shows a zombie or dead task.
func deadState(stat []byte) bool {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	s := stat[i+2]
	return s == 'Z' || s == 'X'
}
