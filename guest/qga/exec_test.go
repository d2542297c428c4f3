package qga

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"
)

// call runs one command through Handle and returns its "return" value, or
// fails t on an error reply.
func call(t *testing.T, a *Agent, command string, args any) json.RawMessage {
	t.Helper()
	ret, qe := try(t, a, command, args)
	if qe != nil {
		t.Fatalf("%s: %v", command, qe)
	}
	return ret
}

// try runs one command through Handle and returns its return value or its
// error.
func try(t *testing.T, a *Agent, command string, args any) (json.RawMessage, *Error) {
	t.Helper()
	req, err := json.Marshal(map[string]any{"execute": command, "arguments": args})
	if err != nil {
		t.Fatal(err)
	}
	reply, _, _ := a.Handle(req)
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *Error          `json:"error"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		t.Fatalf("%s: reply %q: %v", command, reply, err)
	}
	return r.Return, r.Error
}

// waitExit polls guest-exec-status for pid until it reports the exit,
// failing t after 20 s, and returns the raw status.
func waitExit(t *testing.T, a *Agent, pid int) json.RawMessage {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		raw := call(t, a, "guest-exec-status", map[string]any{"pid": pid})
		var st ExecStatus
		if err := json.Unmarshal(raw, &st); err != nil {
			t.Fatalf("status %s: %v", raw, err)
		}
		if st.Exited {
			return raw
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d has not exited after 20 s", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func start(t *testing.T, a *Agent, args map[string]any) int {
	t.Helper()
	var started ExecStarted
	if err := json.Unmarshal(call(t, a, "guest-exec", args), &started); err != nil {
		t.Fatal(err)
	}
	if started.PID <= 0 {
		t.Fatalf("guest-exec returned pid %d", started.PID)
	}
	return started.PID
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestExec(t *testing.T) {
	tests := []struct {
		name  string
		limit int
		args  map[string]any
		want  string // the exited status, exactly
	}{
		{"exit code and both streams",
			0, map[string]any{"path": "sh", "arg": []string{"-c", "echo out; echo err >&2; exit 7"}, "capture-output": true},
			`{"exited":true,"exitcode":7,"out-data":"` + b64("out\n") + `","err-data":"` + b64("err\n") + `","out-truncated":false,"err-truncated":false}`},
		{"absolute path, success",
			0, map[string]any{"path": "/bin/sh", "arg": []string{"-c", "true"}, "capture-output": true},
			`{"exited":true,"exitcode":0}`},
		{"stdin through cat, binary",
			0, map[string]any{"path": "cat", "input-data": b64("hello\x00\xff\n"), "capture-output": true},
			`{"exited":true,"exitcode":0,"out-data":"` + b64("hello\x00\xff\n") + `","out-truncated":false}`},
		{"no input-data reads /dev/null",
			0, map[string]any{"path": "cat", "capture-output": true},
			`{"exited":true,"exitcode":0}`},
		{"output not captured",
			0, map[string]any{"path": "sh", "arg": []string{"-c", "echo out; echo err >&2; exit 3"}},
			`{"exited":true,"exitcode":3}`},
		{"capture false",
			0, map[string]any{"path": "sh", "arg": []string{"-c", "echo out"}, "capture-output": false},
			`{"exited":true,"exitcode":0}`},
		{"capture stdout only",
			0, map[string]any{"path": "sh", "arg": []string{"-c", "echo out; echo err >&2"}, "capture-output": "stdout"},
			`{"exited":true,"exitcode":0,"out-data":"` + b64("out\n") + `","out-truncated":false}`},
		{"capture stderr only",
			0, map[string]any{"path": "sh", "arg": []string{"-c", "echo out; echo err >&2"}, "capture-output": "stderr"},
			`{"exited":true,"exitcode":0,"err-data":"` + b64("err\n") + `","err-truncated":false}`},
		{"capture merged",
			0, map[string]any{"path": "sh", "arg": []string{"-c", "echo out; echo err >&2"}, "capture-output": "merged"},
			`{"exited":true,"exitcode":0,"out-data":"` + b64("out\nerr\n") + `","out-truncated":false}`},
		{"environment replaced",
			0, map[string]any{"path": "sh", "arg": []string{"-c", `echo "$A:$HOME"`}, "env": []string{"A=b"}, "capture-output": "separated"},
			`{"exited":true,"exitcode":0,"out-data":"` + b64("b:\n") + `","out-truncated":false}`},
		{"killed by a signal",
			0, map[string]any{"path": "sh", "arg": []string{"-c", "echo before; kill -TERM $$"}, "capture-output": true},
			`{"exited":true,"signal":15,"out-data":"` + b64("before\n") + `","out-truncated":false}`},
		{"output bounded, the rest drained",
			10, map[string]any{"path": "sh", "arg": []string{"-c", "i=0; while [ $i -lt 2000 ]; do echo 0123456789; i=$((i+1)); done; echo e >&2; exit 4"}, "capture-output": true},
			`{"exited":true,"exitcode":4,"out-data":"` + b64("0123456789") + `","err-data":"` + b64("e\n") + `","out-truncated":true,"err-truncated":false}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &Agent{ExecOutputLimit: tt.limit}
			pid := start(t, a, tt.args)
			if got := string(waitExit(t, a, pid)); got != tt.want {
				t.Errorf("status:\n got %s\nwant %s", got, tt.want)
			}
			// The exit was returned: the pid is forgotten.
			if _, qe := try(t, a, "guest-exec-status", map[string]any{"pid": pid}); qe == nil || qe.Class != ClassGenericError || qe.Desc != "Invalid parameter 'pid'" {
				t.Errorf("second status of pid %d: %v, want GenericError Invalid parameter 'pid'", pid, qe)
			}
		})
	}
}

// TestExecRunning: a running process reads {"exited": false} (and stays
// known); killed, it reads its signal. The process is reaped: no zombie
// is left behind.
func TestExecRunning(t *testing.T) {
	a := &Agent{}
	pid := start(t, a, map[string]any{"path": "sleep", "arg": []string{"30"}})
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	for range 2 {
		if got := string(call(t, a, "guest-exec-status", map[string]any{"pid": pid})); got != `{"exited":false}` {
			t.Fatalf("status of a running process: %s", got)
		}
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if got := string(waitExit(t, a, pid)); got != `{"exited":true,"signal":9}` {
		t.Errorf("status: %s", got)
	}
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Errorf("pid %d still exists after its exit was returned (not reaped?): kill 0: %v", pid, err)
	}
}

func TestExecErrors(t *testing.T) {
	tests := []struct {
		name    string
		command string
		args    any
		desc    string // the GenericError's desc, or its start when it ends in "…"
	}{
		{"no path", "guest-exec", map[string]any{"arg": []string{"x"}}, "Parameter 'path' is missing"},
		{"program not found", "guest-exec", map[string]any{"path": "vmfest-no-such-program"},
			`Guest agent command failed, error was 'exec: "vmfest-no-such-program": executable file not found in $PATH'`},
		{"path not found", "guest-exec", map[string]any{"path": "/nonexistent/prog"},
			`Guest agent command failed, error was 'fork/exec /nonexistent/prog: no such file or directory'`},
		{"input-data not base64", "guest-exec", map[string]any{"path": "cat", "input-data": "!!"}, "Invalid parameter 'input-data': not base64: …"},
		{"capture-output bad mode", "guest-exec", map[string]any{"path": "cat", "capture-output": "all"}, "Parameter 'capture-output' does not accept value 'all'"},
		{"capture-output bad type", "guest-exec", map[string]any{"path": "cat", "capture-output": 1}, "Invalid parameter type for 'capture-output', expected: GuestExecCaptureOutput"},
		{"unknown pid", "guest-exec-status", map[string]any{"pid": 999999999}, "Invalid parameter 'pid'"},
		{"pid out of range", "guest-exec-status", map[string]any{"pid": int64(1) << 40}, "Invalid parameter 'pid'"},
		{"no pid", "guest-exec-status", map[string]any{}, "Parameter 'pid' is missing"},
		{"pid not a number", "guest-exec-status", map[string]any{"pid": 1.5}, "Invalid parameter type for 'pid', expected: integer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &Agent{}
			ret, qe := try(t, a, tt.command, tt.args)
			if qe == nil {
				t.Fatalf("succeeded: %s", ret)
			}
			if qe.Class != ClassGenericError {
				t.Errorf("class %s", qe.Class)
			}
			if prefix, ok := strings.CutSuffix(tt.desc, "…"); ok {
				if !strings.HasPrefix(qe.Desc, prefix) {
					t.Errorf("desc %q, want it to start %q", qe.Desc, prefix)
				}
			} else if qe.Desc != tt.desc {
				t.Errorf("desc %q, want %q", qe.Desc, tt.desc)
			}
		})
	}
}

// TestExecServe runs guest-exec over the wire, as the host sends it, with
// the ids echoed, and checks guest-info lists both commands.
func TestExecServe(t *testing.T) {
	a := &Agent{}
	in := `{"execute":"guest-exec","arguments":{"path":"sh","arg":["-c","echo hi"],"capture-output":true},"id":"a"}` + "\n"
	var out bytes.Buffer
	if err := a.Serve(strings.NewReader(in), &out); err != io.EOF {
		t.Fatal(err)
	}
	var started struct {
		Return ExecStarted `json:"return"`
		ID     string      `json:"id"`
	}
	if err := json.Unmarshal(out.Bytes(), &started); err != nil || started.ID != "a" || started.Return.PID <= 0 {
		t.Fatalf("guest-exec reply %q: %v", out.String(), err)
	}
	req := fmt.Sprintf(`{"execute":"guest-exec-status","arguments":{"pid":%d},"id":"b"}`+"\n", started.Return.PID)
	want := `{"return":{"exited":true,"exitcode":0,"out-data":"aGkK","out-truncated":false},"id":"b"}` + "\n"
	deadline := time.Now().Add(20 * time.Second)
	for {
		out.Reset()
		if err := a.Serve(strings.NewReader(req), &out); err != io.EOF {
			t.Fatal(err)
		}
		if out.String() != `{"return":{"exited":false},"id":"b"}`+"\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not exited after 20 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if out.String() != want {
		t.Errorf("status reply:\n got %q\nwant %q", out.String(), want)
	}
	info := string(call(t, a, "guest-info", nil))
	for _, c := range []string{`{"name":"guest-exec","enabled":true,"success-response":true}`, `{"name":"guest-exec-status","enabled":true,"success-response":true}`} {
		if !strings.Contains(info, c) {
			t.Errorf("guest-info lacks %s", c)
		}
	}
}
