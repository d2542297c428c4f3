package driver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeAgent answers guest-exec with execReply (or execErr) and each
// guest-exec-status with the next of statuses (the last one repeats) or
// statusErr. It records the arguments it was sent.
type fakeAgent struct {
	execReply string
	execErr   error
	statuses  []string
	statusErr error

	execArgs   []string // guest-exec's arguments, as JSON
	statusArgs []string // each guest-exec-status's arguments, as JSON
}

func (f *fakeAgent) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	b, err := json.Marshal(args)
	if err != nil {
		return nil, err
	}
	switch command {
	case "guest-exec":
		f.execArgs = append(f.execArgs, string(b))
		if f.execErr != nil {
			return nil, f.execErr
		}
		return json.RawMessage(f.execReply), nil
	case "guest-exec-status":
		f.statusArgs = append(f.statusArgs, string(b))
		if f.statusErr != nil {
			return nil, f.statusErr
		}
		i := min(len(f.statusArgs), len(f.statuses)) - 1
		return json.RawMessage(f.statuses[i]), nil
	}
	return nil, errors.New("fake agent: unexpected command " + command)
}

func (f *fakeAgent) Close() error { return nil }

func TestExec(t *testing.T) {
	errAgent := errors.New("guest agent guest-exec: GenericError: Guest agent command failed, error was 'Failed to execute child process “nosuch” (No such file or directory)'")
	const running = `{"exited":false}`
	tests := []struct {
		name     string
		req      ExecRequest
		agent    fakeAgent
		timeout  time.Duration
		wantArgs string // guest-exec's arguments, when set
		want     ExecResult
		wantErr  []string // substrings of the error; none: no error
		is       error    // what the error wraps, when set
	}{
		{name: "exit code and both streams, after polls",
			req:      ExecRequest{Path: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 7"}},
			agent:    fakeAgent{execReply: `{"pid":42}`, statuses: []string{running, running, `{"exited":true,"exitcode":7,"out-data":"b3V0Cg==","err-data":"ZXJyCg==","out-truncated":false,"err-truncated":false}`}},
			wantArgs: `{"path":"sh","arg":["-c","echo out; echo err \u003e\u00262; exit 7"],"capture-output":true}`,
			want:     ExecResult{ExitCode: 7, Stdout: []byte("out\n"), Stderr: []byte("err\n")}},
		{name: "success without output (qemu-ga leaves the keys out)",
			req:      ExecRequest{Path: "/bin/true"},
			agent:    fakeAgent{execReply: `{"pid":1}`, statuses: []string{`{"exited":true,"exitcode":0}`}},
			wantArgs: `{"path":"/bin/true","capture-output":true}`,
			want:     ExecResult{}},
		{name: "stdin and environment",
			req:      ExecRequest{Path: "cat", Env: []string{"A=b"}, Stdin: []byte("hi")},
			agent:    fakeAgent{execReply: `{"pid":2}`, statuses: []string{`{"exited":true,"exitcode":0,"out-data":"aGk=","out-truncated":false}`}},
			wantArgs: `{"path":"cat","env":["A=b"],"input-data":"aGk=","capture-output":true}`,
			want:     ExecResult{Stdout: []byte("hi")}},
		{name: "an empty environment is sent empty",
			req:      ExecRequest{Path: "env", Env: []string{}},
			agent:    fakeAgent{execReply: `{"pid":3}`, statuses: []string{`{"exited":true,"exitcode":0}`}},
			wantArgs: `{"path":"env","env":[],"capture-output":true}`,
			want:     ExecResult{}},
		{name: "killed by a signal",
			req:   ExecRequest{Path: "sleep", Args: []string{"100"}},
			agent: fakeAgent{execReply: `{"pid":4}`, statuses: []string{running, `{"exited":true,"signal":9}`}},
			want:  ExecResult{ExitCode: -1, Signal: 9}},
		{name: "truncated output",
			req:   ExecRequest{Path: "yes"},
			agent: fakeAgent{execReply: `{"pid":5}`, statuses: []string{`{"exited":true,"exitcode":0,"out-data":"eQp5Cg==","err-data":"eA==","out-truncated":true,"err-truncated":true}`}},
			want:  ExecResult{Stdout: []byte("y\ny\n"), Stderr: []byte("x"), StdoutTruncated: true, StderrTruncated: true}},
		{name: "old qemu-ga: truncated flag only when true",
			req:   ExecRequest{Path: "yes"},
			agent: fakeAgent{execReply: `{"pid":5}`, statuses: []string{`{"exited":true,"exitcode":0,"out-data":"eQp5Cg==","err-data":"eA==","out-truncated":true}`}},
			want:  ExecResult{Stdout: []byte("y\ny\n"), Stderr: []byte("x"), StdoutTruncated: true}},
		{name: "empty path",
			req:     ExecRequest{},
			wantErr: []string{"exec: the command is empty"}},
		{name: "the agent cannot start it",
			req:     ExecRequest{Path: "nosuch"},
			agent:   fakeAgent{execErr: errAgent},
			wantErr: []string{"exec nosuch: the guest agent could not start it", "No such file or directory"},
			is:      errAgent},
		{name: "reply without a pid",
			req:     ExecRequest{Path: "true"},
			agent:   fakeAgent{execReply: `{}`},
			wantErr: []string{"guest-exec reply has no pid"}},
		{name: "status fails",
			req:     ExecRequest{Path: "true"},
			agent:   fakeAgent{execReply: `{"pid":6}`, statusErr: errAgent},
			wantErr: []string{"exec true: asking the guest agent about pid 6 in the guest"},
			is:      errAgent},
		{name: "out-data not base64",
			req:     ExecRequest{Path: "true"},
			agent:   fakeAgent{execReply: `{"pid":7}`, statuses: []string{`{"exited":true,"exitcode":0,"out-data":"!!"}`}},
			wantErr: []string{"out-data for pid 7 is not base64"}},
		{name: "malformed status",
			req:     ExecRequest{Path: "true"},
			agent:   fakeAgent{execReply: `{"pid":8}`, statuses: []string{`{"exited":"yes"}`}},
			wantErr: []string{"guest-exec-status reply for pid 8 is malformed"}},
		{name: "deadline while it runs",
			req:     ExecRequest{Path: "sleep", Args: []string{"1000"}},
			agent:   fakeAgent{execReply: `{"pid":9}`, statuses: []string{running}},
			timeout: 100 * time.Millisecond,
			wantErr: []string{"exec sleep: stopped waiting for it; the command may still run in the guest as pid 9"},
			is:      context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			got, err := Exec(ctx, &tt.agent, tt.req)
			if tt.wantArgs != "" && (len(tt.agent.execArgs) != 1 || tt.agent.execArgs[0] != tt.wantArgs) {
				t.Errorf("guest-exec arguments:\n got %q\nwant %q", tt.agent.execArgs, tt.wantArgs)
			}
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error; result %+v", got)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q lacks %q", err, s)
					}
				}
				if tt.is != nil && !errors.Is(err, tt.is) {
					t.Errorf("error %q does not wrap %v", err, tt.is)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.ExitCode != tt.want.ExitCode || got.Signal != tt.want.Signal ||
				!bytes.Equal(got.Stdout, tt.want.Stdout) || !bytes.Equal(got.Stderr, tt.want.Stderr) ||
				got.StdoutTruncated != tt.want.StdoutTruncated || got.StderrTruncated != tt.want.StderrTruncated {
				t.Errorf("result:\n got %+v\nwant %+v", got, tt.want)
			}
			// guest-exec-status is asked about the pid guest-exec returned.
			for _, a := range tt.agent.statusArgs {
				if a != tt.agent.execReply {
					t.Errorf("guest-exec-status arguments %s, want %s", a, tt.agent.execReply)
				}
			}
		})
	}
}

// TestExecPollWait: every 10 ms for the first 100 ms of a command, then
// doubling up to 200 ms.
func TestExecPollWait(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct{ ran, last, want time.Duration }{
		{0, 10 * ms, 10 * ms},
		{99 * ms, 10 * ms, 10 * ms},
		{100 * ms, 10 * ms, 20 * ms},
		{150 * ms, 20 * ms, 40 * ms},
		{time.Second, 160 * ms, 200 * ms},
		{time.Minute, 200 * ms, 200 * ms},
	} {
		if got := execPollWait(tc.ran, tc.last); got != tc.want {
			t.Errorf("execPollWait(%v, %v) = %v, want %v", tc.ran, tc.last, got, tc.want)
		}
	}
}

// TestExecBacksOff: the polls wait 10 ms until the command has run 100 ms,
// then 20, 40, 80, 160 and 200 ms, so 14 polls of a running command (13
// waits) take at least 100 + 20 + 40 + 80 = 240 ms (a lower bound, which
// load cannot break: a slow wait only starts the doubling sooner).
func TestExecBacksOff(t *testing.T) {
	const running = `{"exited":false}`
	statuses := slices.Repeat([]string{running}, 13)
	a := &fakeAgent{execReply: `{"pid":1}`, statuses: append(statuses, `{"exited":true,"exitcode":0}`)}
	begin := time.Now()
	if _, err := Exec(context.Background(), a, ExecRequest{Path: "true"}); err != nil {
		t.Fatal(err)
	}
	if n := len(a.statusArgs); n != 14 {
		t.Errorf("%d polls, want 14", n)
	}
	if took := time.Since(begin); took < 240*time.Millisecond {
		t.Errorf("14 polls took %v: under the 240 ms of the back-off", took)
	}
}
