package driver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ExecRequest is a command to run in a guest through its guest agent.
type ExecRequest struct {
	// Path is the program: a path in the guest, or a name the guest
	// agent looks up in its own PATH.
	Path string
	// Args are the arguments after the program name (argv[1:]).
	Args []string
	// Env, when not nil, is the command's whole environment (NAME=value
	// entries); nil gives it the guest agent's environment. Like
	// os/exec's Cmd.Env, an empty non-nil Env is an empty environment.
	Env []string
	// Stdin is the command's standard input; empty: /dev/null.
	Stdin []byte
}

// ExecResult is how a command run by Exec ended.
type ExecResult struct {
	// ExitCode is the command's exit status, or -1 when a signal ended it.
	ExitCode int
	// Signal is the signal that ended the command, 0 when it exited.
	Signal int
	// Stdout and Stderr are what the command wrote, up to the guest
	// agent's bound per stream (16 MiB for qemu-ga, 4 MiB for vmfest's
	// tiny guest agent).
	Stdout, Stderr []byte
	// StdoutTruncated and StderrTruncated say the command wrote more than
	// the bound and the rest was dropped.
	StdoutTruncated, StderrTruncated bool
}

// The poll interval of guest-exec-status: every execPollFirst while the
// command has run less than execPollQuick (most commands vmfest and its
// users run end within it, and a doubling wait would add up to half their
// time again), then doubling up to no more than five times a second.
const (
	execPollFirst = 10 * time.Millisecond
	execPollQuick = 100 * time.Millisecond
	execPollMax   = 200 * time.Millisecond
)

// execArgs is guest-exec's arguments as the QEMU guest agent schema has
// them. Arg and Env are omitted when nil, so nil Env is the agent's
// environment and an empty one is empty.
type execArgs struct {
	Path          string   `json:"path"`
	Arg           []string `json:"arg,omitzero"`
	Env           []string `json:"env,omitzero"`
	InputData     string   `json:"input-data,omitempty"`
	CaptureOutput bool     `json:"capture-output"`
}

// execStatus is guest-exec-status's reply (GuestExecStatus).
type execStatus struct {
	Exited       bool   `json:"exited"`
	ExitCode     *int   `json:"exitcode"`
	Signal       *int   `json:"signal"`
	OutData      string `json:"out-data"`
	ErrData      string `json:"err-data"`
	OutTruncated bool   `json:"out-truncated"`
	ErrTruncated bool   `json:"err-truncated"`
}

// Exec runs a command in the guest through the guest agent (guest-exec
// with its output captured) and waits for it to end, polling
// guest-exec-status every 10 ms for its first 100 ms, then backing off to
// 200 ms between polls. It
// works with qemu-ga and with vmfest's tiny guest agent.
//
// A command that ran returns its result whatever its exit status; an error
// means the command did not start (a program the guest does not have, an
// agent without guest-exec) or its end could not be learnt. When ctx ends
// first, Exec returns an error wrapping ctx's error that says the command
// may still run in the guest, with its pid there.
func Exec(ctx context.Context, a Agent, r ExecRequest) (ExecResult, error) {
	if r.Path == "" {
		return ExecResult{}, errors.New("exec: the command is empty: name the program to run in the guest")
	}
	args := execArgs{Path: r.Path, Arg: r.Args, Env: r.Env, CaptureOutput: true}
	if len(r.Stdin) > 0 {
		args.InputData = base64.StdEncoding.EncodeToString(r.Stdin)
	}
	raw, err := a.Execute(ctx, "guest-exec", args)
	if err != nil {
		if ctx.Err() != nil {
			return ExecResult{}, fmt.Errorf("exec %s: gave up while starting it (the command may have started in the guest): %w", r.Path, ctx.Err())
		}
		return ExecResult{}, fmt.Errorf("exec %s: the guest agent could not start it: %w", r.Path, err)
	}
	var started struct {
		PID *int `json:"pid"`
	}
	if err := json.Unmarshal(raw, &started); err != nil || started.PID == nil {
		return ExecResult{}, fmt.Errorf("exec %s: the guest agent's guest-exec reply has no pid: %.200s", r.Path, raw)
	}
	pid := *started.PID
	begun := time.Now()
	wait := execPollFirst
	for {
		raw, err := a.Execute(ctx, "guest-exec-status", map[string]int{"pid": pid})
		if err != nil {
			if ctx.Err() != nil {
				return ExecResult{}, stillRunning(r.Path, pid, ctx.Err())
			}
			return ExecResult{}, fmt.Errorf("exec %s: asking the guest agent about pid %d in the guest: %w", r.Path, pid, err)
		}
		var st execStatus
		if err := json.Unmarshal(raw, &st); err != nil {
			return ExecResult{}, fmt.Errorf("exec %s: the guest agent's guest-exec-status reply for pid %d is malformed: %w", r.Path, pid, err)
		}
		if st.Exited {
			return st.result(r.Path, pid)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ExecResult{}, stillRunning(r.Path, pid, ctx.Err())
		case <-t.C:
		}
		wait = execPollWait(time.Since(begun), wait)
	}
}

// execPollWait is the wait before the next guest-exec-status poll of a
// command that has run for ran, the last wait having been last.
func execPollWait(ran, last time.Duration) time.Duration {
	if ran < execPollQuick {
		return execPollFirst
	}
	return min(2*last, execPollMax)
}

func stillRunning(path string, pid int, err error) error {
	return fmt.Errorf("exec %s: stopped waiting for it; the command may still run in the guest as pid %d: %w", path, pid, err)
}

// result decodes an exited status.
func (st execStatus) result(path string, pid int) (ExecResult, error) {
	res := ExecResult{ExitCode: -1, StdoutTruncated: st.OutTruncated, StderrTruncated: st.ErrTruncated}
	switch {
	case st.ExitCode != nil:
		res.ExitCode = *st.ExitCode
	case st.Signal != nil:
		res.Signal = *st.Signal
	}
	for _, s := range []struct {
		key  string
		data string
		out  *[]byte
	}{{"out-data", st.OutData, &res.Stdout}, {"err-data", st.ErrData, &res.Stderr}} {
		if s.data == "" {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(s.data)
		if err != nil {
			return ExecResult{}, fmt.Errorf("exec %s: the guest agent's %s for pid %d is not base64: %w", path, s.key, pid, err)
		}
		*s.out = b
	}
	return res, nil
}
