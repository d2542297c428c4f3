package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/internal/testutil"
)

// jsonShape is what --json output must be: one object, or an array of n
// objects, each with the keys given.
type jsonShape struct {
	array bool
	n     int
	keys  []string
	// name, when set, is the "name" (or "id") the (first) object has.
	name string
}

func (s jsonShape) check(t *testing.T, out string) {
	t.Helper()
	var objs []map[string]any
	if s.array {
		if !strings.HasPrefix(strings.TrimSpace(out), "[") {
			t.Fatalf("stdout is not a JSON array:\n%s", out)
		}
		if err := json.Unmarshal([]byte(out), &objs); err != nil {
			t.Fatalf("stdout is not a JSON array: %v\n%s", err, out)
		}
		if len(objs) != s.n {
			t.Fatalf("%d objects, want %d:\n%s", len(objs), s.n, out)
		}
	} else {
		var obj map[string]any
		if err := json.Unmarshal([]byte(out), &obj); err != nil {
			t.Fatalf("stdout is not a JSON object: %v\n%s", err, out)
		}
		objs = []map[string]any{obj}
	}
	for i, o := range objs {
		for _, k := range s.keys {
			if _, ok := o[k]; !ok {
				t.Fatalf("object %d has no %q: %s", i, k, out)
			}
		}
	}
	if s.name != "" && len(objs) > 0 && objs[0]["name"] != s.name && objs[0]["id"] != s.name {
		t.Fatalf("first object is not %q: %s", s.name, out)
	}
}

// checkJSONError checks that a failed --json call printed, on stderr,
// only one-line JSON errors, the last with code.
func checkJSONError(t *testing.T, errOut, code string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
	var last map[string]any
	for _, l := range lines {
		last = nil
		if err := json.Unmarshal([]byte(l), &last); err != nil {
			t.Fatalf("stderr line is not a JSON error: %v\n%q", err, errOut)
		}
		if last["error"] == "" || last["code"] == "" {
			t.Fatalf("stderr line lacks error or code: %q", l)
		}
	}
	if last["code"] != code {
		t.Fatalf("code %q, want %q: %s", last["code"], code, errOut)
	}
}

// TestCLIJSONShapes holds the --json papercut of issue 16: every command
// that changes something prints the resulting object (an array when it
// was given several names; a removal prints what it removed, as show or
// list printed it), and a failure under --json is a JSON error on stderr
// with the API's code, exit status unchanged.
func TestCLIJSONShapes(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	hw := filepath.Join(home, "tiny.yaml")
	if err := os.WriteFile(hw, []byte("memory-size: 128\ncpu-count: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		if code, _, errOut := runCLI(t, home, "create", name, "--image", disk); code != 0 {
			t.Fatalf("create %s: %s", name, errOut)
		}
	}
	t.Cleanup(func() { runCLI(t, home, "destroy", "--force", "a", "b", "x") })
	info := []string{"name", "state", "image", "hardware", "hardware-spec"}
	tests := []struct {
		args  []string
		shape jsonShape
		code  int
		err   string // the JSON error code when code != 0
	}{
		{args: []string{"create", "x", "--image", disk, "--hardware", hw}, shape: jsonShape{keys: info, name: "x"}},
		{args: []string{"stop", "a"}, shape: jsonShape{keys: info, name: "a"}},
		{args: []string{"power-down", "a"}, shape: jsonShape{keys: info, name: "a"}},
		{args: []string{"stop", "a", "b"}, shape: jsonShape{array: true, n: 2, keys: info, name: "a"}},
		{args: []string{"power-down", "b", "a"}, shape: jsonShape{array: true, n: 2, keys: info, name: "b"}},
		{args: []string{"destroy", "x"}, shape: jsonShape{keys: info, name: "x"}},
		{args: []string{"network", "create", "n1", "--kind", "internal"}, shape: jsonShape{keys: []string{"name", "kind"}, name: "n1"}},
		{args: []string{"network", "create", "n2", "--kind", "internal"}, shape: jsonShape{keys: []string{"name", "kind"}, name: "n2"}},
		{args: []string{"network", "rm", "n1"}, shape: jsonShape{keys: []string{"name", "kind"}, name: "n1"}},
		{args: []string{"network", "rm", "n2"}, shape: jsonShape{keys: []string{"name", "kind"}, name: "n2"}},
		{args: []string{"hardware", "add", hw}, shape: jsonShape{keys: []string{"name", "memory-size", "cpu-count", "nics"}, name: "tiny"}},
		{args: []string{"hardware", "list"}, shape: jsonShape{array: true, n: 6, keys: []string{"name", "memory-size", "cpu-count", "nics"}, name: "micro"}},
		{args: []string{"hardware", "rm", "tiny"}, shape: jsonShape{keys: []string{"name", "memory-size", "cpu-count", "nics"}, name: "tiny"}},
		{args: []string{"doctor"}, shape: jsonShape{array: true}},
		{args: []string{"version"}, shape: jsonShape{keys: []string{"version"}}},
		// Failures: a JSON error on stderr with the API's code.
		{args: []string{"show", "ghost"}, code: 1, err: "not-found"},
		{args: []string{"stop", "ghost"}, code: 1, err: "not-found"},
		{args: []string{"stop", "a", "ghost"}, code: 1, err: "not-found", shape: jsonShape{array: true, n: 1, keys: info, name: "a"}},
		{args: []string{"destroy", "ghost"}, code: 1, err: "not-found"},
		{args: []string{"create", "a", "--image", disk}, code: 1, err: "exists"},
		{args: []string{"create", "bad/name", "--image", disk}, code: 1, err: "invalid"},
		{args: []string{"create", "y"}, code: 1, err: "invalid"},
		{args: []string{"create", "y", "--image", disk, "--memory", "-5"}, code: 1, err: "invalid"},
		{args: []string{"create", "y", "--image", disk, "--hardware", "mirco"}, code: 1, err: "not-found"},
		{args: []string{"pause", "a"}, code: 1, err: "wrong-state"},
		{args: []string{"resume", "a"}, code: 1, err: "wrong-state"},
		{args: []string{"network", "rm", "ghost"}, code: 1, err: "not-found"},
		{args: []string{"hardware", "rm", "ghost"}, code: 1, err: "not-found"},
		{args: []string{"model", "rm", "ghost"}, code: 1, err: "not-found"},
		{args: []string{"network", "craete", "foo"}, code: 1, err: "invalid"},
		{args: []string{"stop", "--bogus", "a"}, code: 1, err: "invalid"},
		{args: []string{"show"}, code: 1, err: "invalid"},
		{args: []string{"frobnicate"}, code: 1, err: "invalid"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, home, append([]string{"--json"}, tt.args...)...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out, errOut)
			}
			if tt.code != 0 {
				checkJSONError(t, errOut, tt.err)
				// Machines that were done are printed even when
				// others failed; else a failure prints nothing.
				if tt.shape.keys == nil && out != "" {
					t.Fatalf("stdout of a failure: %q", out)
				}
				if tt.shape.keys == nil {
					return
				}
			}
			tt.shape.check(t, out)
		})
	}
}

// TestCLIErrorWording holds the wording papercut of issue 16: no doubled
// labels added by the CLI, --image says what a file must be, and a
// missing file is "file not found".
func TestCLIErrorWording(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	text := filepath.Join(home, "passwd")
	if err := os.WriteFile(text, []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(home, "x.yml")
	tests := []cliCase{
		{args: []string{"create", "vm", "--image", text}, code: 1, stderr: "must be a disk image (raw or qcow2) or an image spec (YAML or JSON", notStderr: "spec.imageFields"},
		{args: []string{"create", "vm", "--image", disk, "--hardware", missing}, code: 1, stderr: "--hardware " + missing + ": file not found", notStderr: "invalid name"},
		{args: []string{"create", "vm", "--image", disk, "--hardware", "./x.yml"}, code: 1, stderr: "--hardware ./x.yml: file not found"},
		{args: []string{"create", "vm", "--image", "./missing.qcow2"}, code: 1, stderr: "--image ./missing.qcow2: file not found"},
		{args: []string{"hardware", "add", missing}, code: 1, stderr: missing + ": file not found"},
		{args: []string{"create", "vm", "--image", disk, "--hardware", "mirco"}, code: 1, stderr: `hardware model "mirco"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) { tt.check(t, home) })
	}
}

// TestCLIJSONLifecycle boots the tiny guest on a NAT-only NIC and holds
// the --json shape of the commands that need a running machine: start,
// pause, resume (and again, already so) and power-down print the
// machine's Info in the state they left it.
func TestCLIJSONLifecycle(t *testing.T) {
	meta := tinyImage(t)
	home := machineHome(t)
	hw := filepath.Join(home, "nat.yaml")
	if err := os.WriteFile(hw, []byte("memory-size: 256\ncpu-count: 1\nnetwork:\n  - attachment-type: nat\n    adapter-type: virtio\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCLI(t, home, "create", "vm", "--image", meta, "--hardware", hw); code != 0 {
		t.Fatalf("create: %s", errOut)
	}
	t.Cleanup(func() { runCLI(t, home, "destroy", "--force", "vm") })
	steps := []struct {
		args  []string
		state string
	}{
		{[]string{"start", "vm", "--wait", "90s"}, "running"},
		{[]string{"pause", "vm"}, "paused"},
		{[]string{"pause", "vm"}, "paused"},
		{[]string{"resume", "vm"}, "running"},
		{[]string{"resume", "vm"}, "running"},
		{[]string{"power-down", "vm"}, "powered-off"},
		{[]string{"start", "vm"}, ""}, // running, or still starting
		{[]string{"destroy", "--force", "vm"}, ""},
	}
	for _, s := range steps {
		code, out, errOut := runCLI(t, home, append([]string{"--json"}, s.args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", s.args, code, errOut)
		}
		var info map[string]any
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("%v: stdout is not a JSON object: %v\n%s", s.args, err, out)
		}
		if info["name"] != "vm" || (s.state != "" && info["state"] != s.state) {
			t.Fatalf("%v: name %v, state %v; want vm, %s", s.args, info["name"], info["state"], s.state)
		}
		if s.args[0] == "resume" {
			checkExec(t, home)
		}
	}
}

// checkExec runs commands in the running machine vm with vmfest exec: its
// output and status come back as the command's own.
func checkExec(t *testing.T, home string) {
	t.Helper()
	code, out, errOut := runCLI(t, home, "exec", "vm", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
	if code != 7 || out != "out\n" || !strings.Contains(errOut, "err") {
		t.Fatalf("exec: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = runCLI(t, home, "--json", "exec", "vm", "--", "echo", "hi")
	var res struct {
		ExitCode int    `json:"exit-code"`
		Stdout   []byte `json:"stdout"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 || string(res.Stdout) != "hi\n" {
		t.Fatalf("exec --json: exit %d, %q (%v), stderr %q", code, out, err, errOut)
	}
	if code, _, errOut := runCLI(t, home, "exec", "vm", "echo", "hi"); code == 0 || !strings.Contains(errOut, `put the command after "--"`) {
		t.Fatalf("exec without --: exit %d, %q", code, errOut)
	}
	// cp there and back.
	dir := t.TempDir()
	src := filepath.Join(dir, "note.txt")
	if err := os.WriteFile(src, []byte("copied through vmfest cp\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCLI(t, home, "cp", src, "vm:/tmp"); code != 0 {
		t.Fatalf("cp to the guest: %s", errOut)
	}
	back := filepath.Join(dir, "back.txt")
	if code, _, errOut := runCLI(t, home, "cp", "vm:/tmp/note.txt", back); code != 0 {
		t.Fatalf("cp from the guest: %s", errOut)
	}
	if data, err := os.ReadFile(back); err != nil || string(data) != "copied through vmfest cp\n" {
		t.Fatalf("round trip: %q, %v", data, err)
	}
	if code, _, errOut := runCLI(t, home, "cp", src, back); code == 0 || !strings.Contains(errOut, "write exactly one side as NAME:/path") {
		t.Fatalf("cp between two host paths: exit %d, %q", code, errOut)
	}
	// Through the guest agent: no network, no key.
	if code, _, errOut := runCLI(t, home, "cp", "--via", "agent", src, "vm:/root/agent.txt"); code != 0 {
		t.Fatalf("cp --via agent to the guest: %s", errOut)
	}
	if code, _, errOut := runCLI(t, home, "cp", "--via", "agent", "vm:/root/agent.txt", back); code != 0 {
		t.Fatalf("cp --via agent from the guest: %s", errOut)
	}
	if data, err := os.ReadFile(back); err != nil || string(data) != "copied through vmfest cp\n" {
		t.Fatalf("round trip through the agent: %q, %v", data, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"cp", "--via", "ftp", src, "vm:/tmp"}, `--via "ftp": use ssh or agent`},
		{[]string{"cp", src, "vm:tmp"}, "give an absolute path in the guest"},
		{[]string{"cp", "--via", "agent", "vm:/no/such", back}, "no such file or directory in the guest"},
	} {
		if code, _, errOut := runCLI(t, home, c.args...); code == 0 || !strings.Contains(errOut, c.want) {
			t.Fatalf("%v: exit %d, %q; want an error with %q", c.args, code, errOut, c.want)
		}
	}
}
