package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/internal/testutil"
)

// TestCLIPapercuts holds issue 16's papercuts that show without a
// running machine: several names fail once each with a summary naming
// them all, --memory 0, --version, models' aliases, a local model add's
// phases and sizes in MiB.
func TestCLIPapercuts(t *testing.T) {
	home := machineHome(t) // nothing here should start, but if it did
	dir := t.TempDir()
	disk := filepath.Join(dir, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	raw := testutil.BootSectorDisk(t, filepath.Join(dir, "img-1.raw"))
	for _, n := range []string{"a", "b", "c", "d"} {
		if code, _, errOut := runCLI(t, home, "create", n, "--image", disk); code != 0 {
			t.Fatalf("create %s: %s", n, errOut)
		}
	}
	t.Cleanup(func() { runCLI(t, home, "destroy", "--force", "a", "b", "c", "d") })
	tests := []struct {
		cliCase
		// lines: stdout has each of these lines (in any order: the
		// machines are acted on at once).
		lines []string
		// once: these appear exactly once on stderr.
		once []string
	}{
		// Each failure once; the summary names every failed name and
		// its cause; the others are done.
		{cliCase: cliCase{args: []string{"destroy", "a", "b", "nope"}, code: 1,
			stderr: "vmfest: 1 of 3 machines failed:\n  nope: not found: machine \"nope\"\n"},
			lines: []string{"destroyed a", "destroyed b"}, once: []string{"not found"}},
		{cliCase: cliCase{args: []string{"start", "ghost1", "ghost2"}, code: 1,
			stderr: "vmfest: 2 of 2 machines failed:\n  ghost1: not found: machine \"ghost1\"\n  ghost2: not found: machine \"ghost2\"\n"},
			once: []string{`machine "ghost1"`, `machine "ghost2"`}},
		{cliCase: cliCase{args: []string{"stop", "ghost1", "c", "d"}, code: 1,
			stderr: "vmfest: 1 of 3 machines failed:\n  ghost1: not found: machine \"ghost1\"\n"},
			lines: []string{"c is already powered-off", "d is already powered-off"}, once: []string{`machine "ghost1"`}},
		{cliCase: cliCase{args: []string{"pause", "c", "d"}, code: 1,
			stderr: "vmfest: 2 of 2 machines failed:\n  c: cannot pause machine \"c\": it is powered-off"}, once: []string{`machine "c"`, `machine "d"`}},
		// --memory 0 and --cpus 0 are refused as -5 is.
		{cliCase: cliCase{args: []string{"create", "x", "--image", disk, "--memory", "0"}, code: 1, stderr: "--memory 0: must be a positive number of MiB"}},
		{cliCase: cliCase{args: []string{"create", "x", "--image", disk, "--memory", "-5"}, code: 1, stderr: "--memory -5: must be a positive number of MiB"}},
		{cliCase: cliCase{args: []string{"create", "x", "--image", disk, "--cpus", "0"}, code: 1, stderr: "--cpus 0: must be at least 1"}},
		// --version is the version command.
		{cliCase: cliCase{args: []string{"--version"}, stdout: "vmfest " + version + "\n"}},
		{cliCase: cliCase{args: []string{"version"}, stdout: "vmfest " + version + "\n"}},
		// A local file is read, not downloaded; sizes are in MiB.
		{cliCase: cliCase{args: []string{"model", "add", raw}, stdout: "installed image model img-1 (1 MiB, raw", stderr: "read...", notStderr: "download"}},
		{cliCase: cliCase{args: []string{"models"}, stdout: "1 MiB"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, home, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.stdout) || !strings.Contains(errOut, tt.stderr) ||
				(tt.notStderr != "" && strings.Contains(errOut, tt.notStderr)) {
				t.Fatalf("exit %d (want %d)\nstdout: %q (want %q)\nstderr: %q (want %q, not %q)",
					code, tt.code, out, tt.stdout, errOut, tt.stderr, tt.notStderr)
			}
			outLines := strings.Split(out, "\n")
			for _, l := range tt.lines {
				if !slices.Contains(outLines, l) {
					t.Errorf("no line %q on stdout: %q", l, out)
				}
			}
			for _, s := range tt.once {
				if n := strings.Count(errOut, s); n != 1 {
					t.Errorf("%q %d times on stderr: %q", s, n, errOut)
				}
			}
		})
	}
	// models has no "ls" alias (a top-level ls is list's, of machines);
	// model list keeps its own.
	if _, out, _ := runCLI(t, home, "models", "--help"); strings.Contains(out, "Aliases") {
		t.Errorf("models --help offers aliases:\n%s", out)
	}
	if _, out, _ := runCLI(t, home, "model", "list", "--help"); !strings.Contains(out, "list, ls") {
		t.Errorf("model list --help lost its ls alias:\n%s", out)
	}
	if _, out, _ := runCLI(t, home, "ls", "--json"); !strings.Contains(out, `"name": "c"`) {
		t.Errorf("ls is not list: %s", out)
	}
}

// TestCLIFailuresJSON: under --json each failure is one JSON error line
// and the last line names every failed machine, with the code.
func TestCLIFailuresJSON(t *testing.T) {
	home := t.TempDir()
	code, out, errOut := runCLI(t, home, "--json", "stop", "ghost1", "ghost2")
	if code != 1 {
		t.Fatalf("exit %d", code)
	}
	checkJSONError(t, errOut, "not-found")
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want one a failure and the summary:\n%s", len(lines), errOut)
	}
	var last map[string]any
	json.Unmarshal([]byte(lines[2]), &last)
	if last["error"] != "2 of 2 machines failed: ghost1, ghost2" {
		t.Fatalf("summary %q", last["error"])
	}
	if strings.TrimSpace(out) != "[]" {
		t.Fatalf("stdout %q, want []", out)
	}
}

// TestWarningHandler: the Local's log records are "warning: ..." lines,
// each message once per command, whatever its attributes.
func TestWarningHandler(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(newWarningHandler(&buf))
	log.Info("quiet")
	log.Warn("TCG: no KVM, machines run emulated", "machine", "a")
	log.With("machine", "b").Warn("TCG: no KVM, machines run emulated")
	log.Warn("network clean-up after the machine stopped", "machine", "a", "err", "operation not permitted\nsecond line")
	log.Error("something failed", "err", "x")
	want := "warning: TCG: no KVM, machines run emulated (machine=a)\n" +
		"warning: network clean-up after the machine stopped (machine=a err=operation not permitted; second line)\n" +
		"warning: something failed (err=x)\n"
	if buf.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", buf.String(), want)
	}
	if log.Handler().Enabled(context.Background(), slog.LevelInfo) {
		t.Fatal("info is enabled")
	}
}

func TestSizeText(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0 MiB"},
		{1 << 20, "1 MiB"},
		{512 << 10, "0.5 MiB"},
		{3 << 30, "3072 MiB"},
		{(1 << 30) + (1 << 19), "1024.5 MiB"},
	}
	for _, tt := range tests {
		if got := sizeText(tt.n); got != tt.want {
			t.Errorf("sizeText(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}

// TestWaitReadyError: Ctrl-C during start --wait says the machine keeps
// booting, never "timed out"; --wait's own timeout names the --wait.
func TestWaitReadyError(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	root := fmt.Errorf("machine vm: %w: the guest agent did not answer: %w", vmfest.ErrTimeout, context.Canceled)
	tests := []struct {
		name   string
		parent context.Context
		err    error
		want   string
		code   string
	}{
		{"ctrl-c", canceled, root, "machine vm: context canceled: interrupted while waiting for its guest agent; the machine keeps booting ('vmfest stop vm' stops it)", "canceled"},
		{"--wait ran out", context.Background(), fmt.Errorf("machine vm: %w: the guest agent did not answer: %w", vmfest.ErrTimeout, context.DeadlineExceeded),
			"machine vm: timed out: the guest agent did not answer: context deadline exceeded (--wait 30s); the machine keeps booting", "timeout"},
		{"other", context.Background(), errors.New("agent: broken pipe"), "agent: broken pipe", "internal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := waitReadyError(tt.parent, "vm", 30*time.Second, tt.err)
			if err.Error() != tt.want || strings.Contains(tt.name, "ctrl") && strings.Contains(err.Error(), "timed out") {
				t.Fatalf("got %q\nwant %q", err, tt.want)
			}
			if code := errorCode(ranError{err}); code != tt.code {
				t.Fatalf("code %q, want %q", code, tt.code)
			}
		})
	}
}

// TestProgressInterrupted: a setup that fails or is interrupted leaves
// the bar where it was; only a finished one shows 100 %.
func TestProgressInterrupted(t *testing.T) {
	for _, tt := range []struct {
		name     string
		finished bool
	}{{"interrupted", false}, {"finished", true}} {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			d := &progressDisplay{w: &buf, tty: true}
			d.report(vmfest.Progress{Phase: "download", Done: 10 << 20, Total: 100 << 20})
			if tt.finished {
				d.finish()
			} else {
				d.abandon()
			}
			if got := strings.Contains(buf.String(), "100%"); got != tt.finished {
				t.Fatalf("100%% shown: %v, want %v: %q", got, tt.finished, buf.String())
			}
			if !strings.Contains(buf.String(), "MiB") {
				t.Fatalf("sizes not in MiB: %q", buf.String())
			}
		})
	}
}
