package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/testutil"
)

// runCLI runs the CLI in-process as main does (same argument handling,
// same error printing) and returns its exit status and output.
func runCLI(t *testing.T, home string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := exitStatus(execute(context.Background(), append([]string{"--home", home}, args...), &out, &errOut), &errOut)
	return code, out.String(), errOut.String()
}

// cliCase is one CLI call: its exit status, and what stdout and stderr
// must (and must not) contain.
type cliCase struct {
	args      []string
	code      int
	stdout    string
	stderr    string
	notStderr string
}

func (c cliCase) check(t *testing.T, home string) {
	t.Helper()
	code, out, errOut := runCLI(t, home, c.args...)
	if code != c.code || !strings.Contains(out, c.stdout) || !strings.Contains(errOut, c.stderr) ||
		(c.notStderr != "" && strings.Contains(errOut, c.notStderr)) {
		t.Fatalf("vmfest %s: exit %d (want %d)\nstdout: %q (want %q)\nstderr: %q (want %q, not %q)",
			strings.Join(c.args, " "), code, c.code, out, c.stdout, errOut, c.stderr, c.notStderr)
	}
	if c.code == 1 && errOut == "" {
		t.Fatalf("vmfest %s: exit %d with nothing on stderr", strings.Join(c.args, " "), code)
	}
}

// TestExitStatus holds bug 1: only the remote command's own status exits
// silently; any other error — even one wrapping a child process's exit
// status, as "start QEMU: exit status 1" and qemu-img's do — prints its
// message and exits 1.
func TestExitStatus(t *testing.T) {
	child := exec.Command("sh", "-c", "exit 2").Run()
	var ee *exec.ExitError
	if !errors.As(child, &ee) {
		t.Fatalf("sh -c 'exit 2': %v", child)
	}
	tests := []struct {
		name   string
		err    error
		code   int
		stderr string
	}{
		{"success", nil, 0, ""},
		{"remote status", exitError{3}, 3, ""},
		{"wrapped child status", fmt.Errorf("create overlay with qemu-img: %w: Could not open", child), 1, "vmfest: create overlay with qemu-img: exit status 2: Could not open\n"},
		{"QEMU start", fmt.Errorf("start QEMU: %w: Could not set up host forwarding rule", child), 1, "vmfest: start QEMU: exit status 2: Could not set up host forwarding rule\n"},
		{"plain", errors.New("not found: machine \"x\"\nsecond line"), 1, "vmfest: not found: machine \"x\"; second line\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var errOut bytes.Buffer
			if code := exitStatus(tt.err, &errOut); code != tt.code || errOut.String() != tt.stderr {
				t.Fatalf("exit %d, stderr %q; want %d, %q", code, errOut.String(), tt.code, tt.stderr)
			}
		})
	}
}

// TestCLIArguments holds bugs 2-6 as far as they show without a running
// machine: flags after NAME, --wait's value, doctor with --server,
// mistyped subcommands, and stop/power-down of a powered-off machine.
func TestCLIArguments(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	if code, _, errOut := runCLI(t, home, "create", "off", "--image", disk); code != 0 {
		t.Fatalf("create: %s", errOut)
	}
	tests := []cliCase{
		// 2: flags are flags until "--".
		{args: []string{"ssh", "off", "--help"}, stdout: "Usage:"},
		{args: []string{"ssh", "off", "-l"}, code: 1, stderr: "flag needs an argument: 'l' in -l"},
		{args: []string{"ssh", "off", "--bogus", "--", "id"}, code: 1, stderr: "unknown flag: --bogus"},
		{args: []string{"ssh", "ghost", "--json", "-l", "root", "--wait", "1s", "--", "echo", "hi"}, code: 1, stderr: `{"error":"not found: machine \"ghost\"","code":"not-found"}`},
		{args: []string{"ssh", "off", "echo", "hi"}, code: 1, stderr: `put the remote command after "--"`},
		// 3: one rule for --wait: a duration after it, spaced or with "=", is its value.
		{args: []string{"start", "ghost", "--wait", "30s"}, code: 1, stderr: `not found: machine "ghost"`, notStderr: "30s"},
		{args: []string{"start", "ghost", "--wait=30s"}, code: 1, stderr: `not found: machine "ghost"`, notStderr: "30s"},
		{args: []string{"start", "--wait", "ghost"}, code: 1, stderr: `not found: machine "ghost"`, notStderr: "failed"},
		{args: []string{"start", "ghost", "--wait", "30"}, code: 1, stderr: `invalid argument "30" for "--wait" flag`},
		{args: []string{"ip", "ghost", "--wait", "30s"}, code: 1, stderr: `not found: machine "ghost"`},
		{args: []string{"ssh", "ghost", "--wait", "30s"}, code: 1, stderr: `not found: machine "ghost"`},
		{args: []string{"start", "--help"}, stdout: "--wait 30s"},
		// 4: doctor checks only the local state directory.
		{args: []string{"--server", "unix:///nonexistent/vmfest.sock", "doctor"}, code: 1, stderr: "doctor checks only the local state directory"},
		{args: []string{"doctor", "--help"}, stdout: "local state directory"},
		// 5: a mistyped subcommand is an error with suggestions.
		// Suggestions print as lines of their own, never folded into "; ;".
		{args: []string{"network", "craete", "foo"}, code: 1, stderr: "vmfest: unknown command \"craete\" for \"vmfest network\"\n  did you mean \"create\"?\n", notStderr: ";"},
		{args: []string{"hardware", "delete", "x"}, code: 1, stderr: "vmfest: unknown command \"delete\" for \"vmfest hardware\"\n  did you mean \"rm\"?\n", notStderr: ";"},
		{args: []string{"model", "lst"}, code: 1, stderr: "unknown command \"lst\" for \"vmfest model\"\n  did you mean \"list\"?\n  see 'vmfest model --help'\n", notStderr: ";"},
		{args: []string{"strat", "vm"}, code: 1, stderr: "vmfest: unknown command \"strat\" for \"vmfest\"\n  did you mean \"start\"?\n  see 'vmfest --help'\n", notStderr: ";"},
		{args: []string{"frobnicate"}, code: 1, stderr: "vmfest: unknown command \"frobnicate\" for \"vmfest\"\n  see 'vmfest --help'\n"},
		{args: []string{}, stdout: "Available Commands:"},
		{args: []string{"network"}, stdout: "Available Commands:"},
		// 6: stop and power-down of a powered-off machine are done already.
		{args: []string{"stop", "off"}, stdout: "off is already powered-off"},
		{args: []string{"power-down", "off"}, stdout: "off is already powered-off"},
		{args: []string{"pause", "off"}, code: 1, stderr: `cannot pause machine "off": it is powered-off`},
		{args: []string{"resume", "off"}, code: 1, stderr: `cannot resume machine "off": it is powered-off`},
		{args: []string{"stop", "--help"}, stdout: "already powered off"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) { tt.check(t, home) })
	}
}

// TestCLIMachineLifecycle boots the tiny guest on NAT-only NICs (their
// SSH forwards are on 127.0.0.1) and holds bugs 1, 2, 3 and 6 on a running
// machine: two machines started at once and waited for, a machine whose
// forward clashes fails to start with QEMU's message printed, start --wait
// DUR, ssh with flags after NAME and the remote status, ssh to a paused
// machine refused at once, stop --timeout saying the time, and pause,
// resume and stop twice over.
func TestCLIMachineLifecycle(t *testing.T) {
	meta := tinyImage(t)
	home := machineHome(t)
	// Both machines forward the same free loopback port: the second
	// start fails in QEMU, and that failure must be printed (bug 1).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	hw := filepath.Join(home, "nat.yaml")
	if err := os.WriteFile(hw, []byte(fmt.Sprintf("memory-size: 256\ncpu-count: 1\nnetwork:\n  - attachment-type: nat\n    adapter-type: virtio\n    nat-rules:\n      - {name: web, host-ip: 127.0.0.1, host-port: %d, guest-port: 80}\n", port)), 0o644); err != nil {
		t.Fatal(err)
	}
	// vm3 has a NAT NIC without forwards: it boots beside vm.
	hw3 := filepath.Join(home, "nat3.yaml")
	if err := os.WriteFile(hw3, []byte("memory-size: 256\ncpu-count: 1\nnetwork:\n  - attachment-type: nat\n    adapter-type: virtio\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct{ name, hw string }{{"vm", hw}, {"vm2", hw}, {"vm3", hw3}} {
		if code, _, errOut := runCLI(t, home, "create", m.name, "--image", meta, "--hardware", m.hw); code != 0 {
			t.Fatalf("create %s: %s", m.name, errOut)
		}
		t.Cleanup(func() { runCLI(t, home, "destroy", "--force", m.name) })
	}
	begun := time.Now()
	// Several names start at once, and --wait waits for all.
	code, out, errOut := runCLI(t, home, "start", "vm", "vm3", "--wait", "90s")
	if code != 0 || !strings.Contains(out, "vm ready in") || !strings.Contains(out, "vm3 ready in") {
		t.Fatalf("start vm vm3 --wait 90s: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	t.Logf("two machines ready in %s", time.Since(begun).Round(time.Millisecond))
	// Warnings (TCG's, for one) are "warning: ..." lines, each said
	// once for both machines, never slog's text.
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(errOut), "\n") {
		if l == "" {
			continue
		}
		if !strings.HasPrefix(l, "warning: ") || seen[l] {
			t.Fatalf("stderr of start vm vm3: line %q is not a first warning:\n%s", l, errOut)
		}
		seen[l] = true
	}
	t.Logf("warnings: %q", errOut)
	steps := []cliCase{
		{args: []string{"start", "vm", "--wait"}, code: 1, stderr: `cannot start machine "vm": it is running`},
		{args: []string{"ssh", "vm", "--wait", "60s", "-l", "root", "--json", "--", "echo", "hi", "--wait"}, stdout: "hi --wait\n"},
		{args: []string{"ssh", "vm", "--", "sh", "-c", "exit 7"}, code: 7},
		{args: []string{"start", "vm2"}, code: 1, stderr: fmt.Sprintf("127.0.0.1:%d", port)},
		{args: []string{"pause", "vm"}, stdout: "paused vm"},
		{args: []string{"pause", "vm"}, stdout: "vm is already paused"},
		// ssh to a paused machine says so at once, not after --wait.
		{args: []string{"ssh", "vm", "--wait", "90s", "--", "true"}, code: 1, stderr: `cannot ssh to machine "vm": it is paused`},
		{args: []string{"resume", "vm"}, stdout: "resumed vm"},
		{args: []string{"resume", "vm"}, stdout: "vm is already running"},
		// --timeout too short for any guest: the error says the time.
		{args: []string{"stop", "vm3", "--timeout", "50ms"}, code: 1, stderr: "--timeout 50ms ran out after "},
		{args: []string{"power-down", "vm", "vm3"}, stdout: "powered down vm"},
		{args: []string{"power-down", "vm"}, stdout: "vm is already powered-off"},
		{args: []string{"stop", "vm"}, stdout: "vm is already powered-off"},
	}
	for _, s := range steps {
		s.check(t, home)
	}
	t.Logf("lifecycle took %s", time.Since(begun).Round(time.Millisecond))
}

// tinyImage skips a test that boots a real guest under -short and returns
// the tiny guest's .meta (VMFEST_TEST_IMAGE, else the one make image built).
func tinyImage(t *testing.T) string { return testutil.TinyImageMeta(t) }

// machineHome returns a fresh state directory for a test that starts
// machines: when the test ends, passed or failed, every QEMU started in it
// is killed before the directory is removed.
func machineHome(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Cleanup(func() { testutil.KillMachines(home) })
	return home
}
