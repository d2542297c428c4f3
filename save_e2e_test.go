package vmfest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/spec"
)

// guestRun runs a shell command in the guest and returns its trimmed
// standard output; a non-zero exit fails the test.
func guestRun(ctx context.Context, t *testing.T, m Machine, script string) string {
	t.Helper()
	res, err := m.Exec(ctx, ExecRequest{Command: []string{"sh", "-c", script}})
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("%s: exit %d: %s", script, res.ExitCode, res.Stderr)
	}
	return strings.TrimSpace(string(res.Stdout))
}

// saveHardware is the micro shape with no NIC: saved state is about memory
// and devices, and a NIC-less machine needs no root or namespace.
func saveHardware() Hardware {
	h := spec.BuiltinHardware()["micro"]
	h.Network = nil
	return HardwareSpec(h)
}

// TestSaveResume boots the tiny guest, writes a file and starts a process
// in it, saves it (no QEMU left, state saved), starts it again and finds
// the file and the same process alive; the guest's clock is the host's
// again. Then a paused machine saved comes back paused, and power-down
// and destroy of a saved machine discard its state.
func TestSaveResume(t *testing.T) {
	image := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 5*time.Minute)
	m := bootTiny(ctx, t, l, "sv1", image, saveHardware())
	dir := l.home.MachinePath("sv1")

	guestRun(ctx, t, m, "echo 'kept across a save' > /tmp/vmfest-proof")
	pid := guestRun(ctx, t, m, "sleep 100000 >/dev/null 2>&1 & echo $!")

	begun := time.Now()
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	saved := time.Since(begun)
	expectState(t, m, Saved)
	if _, alive, _ := qemu.PID(dir); alive {
		t.Fatal("QEMU still runs after the save")
	}
	fi, err := os.Stat(savedStatePath(dir))
	if err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil || info.State != Saved || info.PID != 0 {
		t.Fatalf("info of the saved machine: state %s pid %d, %v", info.State, info.PID, err)
	}

	// A few seconds pass while it is saved: its clock must be set after.
	time.Sleep(3 * time.Second)
	begun = time.Now()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	running := time.Since(begun)
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("saved %d MiB in %v; resumed: running after %v, agent after %v", fi.Size()>>20, saved.Round(time.Millisecond), running.Round(time.Millisecond), time.Since(begun).Round(time.Millisecond))
	expectState(t, m, Running)
	if hasSavedState(dir) {
		t.Fatal("the saved state was not discarded")
	}
	if got := guestRun(ctx, t, m, "cat /tmp/vmfest-proof"); got != "kept across a save" {
		t.Fatalf("the file after the resume: %q", got)
	}
	if got := guestRun(ctx, t, m, "kill -0 "+pid+" && echo alive"); got != "alive" {
		t.Fatalf("process %s after the resume: %q", pid, got)
	}
	// The clock: set by guest-set-time when the guest's agent has it,
	// else the guest's own clock lags by the time it was saved.
	if out := guestRun(ctx, t, m, "date +%s"); out != "" {
		var guest int64
		for _, c := range out {
			guest = guest*10 + int64(c-'0')
		}
		t.Logf("guest clock - host clock after the resume: %ds", guest-time.Now().Unix())
	}

	// Saved paused, it comes back paused.
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, Saved)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, Paused)
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if got := guestRun(ctx, t, m, "kill -0 "+pid+" && echo alive"); got != "alive" {
		t.Fatalf("process %s after the paused resume: %q", pid, got)
	}

	// Power-down of a saved machine discards the state; the next start
	// boots afresh (the process is gone).
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, PoweredOff)
	if hasSavedState(dir) {
		t.Fatal("power-down kept the saved state")
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// By its command line: the new boot's own processes may take the pid
	// (the tiny guest starts one more at boot, its DHCP client).
	if got := guestRun(ctx, t, m, `[ "$(tr '\0' ' ' </proc/`+pid+`/cmdline 2>/dev/null)" = "sleep 100000 " ] && echo alive || echo gone`); got != "gone" {
		t.Fatalf("process %s after power-down and a cold boot: %q", pid, got)
	}

	// Destroy of a saved machine removes it, state and all.
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the machine directory after destroy: %v", err)
	}
}
