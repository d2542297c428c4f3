package vmfest

import (
	"context"
	"fmt"

	"github.com/vmfest/vmfest/driver"
)

// ExecRequest is a command for Machine.Exec.
type ExecRequest struct {
	// Command is the program (a path in the guest, or a name looked up in
	// the guest agent's PATH) and its arguments.
	Command []string `json:"command"`
	// Env, when set, is the command's whole environment (NAME=value);
	// unset: the guest agent's.
	Env []string `json:"env,omitempty"`
	// Stdin is the command's standard input (base64 in JSON); empty:
	// /dev/null. It travels in one guest-agent request: a few MiB at most.
	Stdin []byte `json:"stdin,omitempty"`
}

// ExecResult is how a command run by Machine.Exec ended.
type ExecResult struct {
	// ExitCode is the command's exit status, -1 when a signal ended it.
	ExitCode int `json:"exit-code"`
	// Signal is the signal that ended the command, 0 when it exited.
	Signal int `json:"signal,omitempty"`
	// Stdout and Stderr are what it wrote (base64 in JSON), up to the
	// guest agent's bound per stream.
	Stdout []byte `json:"stdout,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
	// StdoutTruncated and StderrTruncated say the rest was dropped.
	StdoutTruncated bool `json:"stdout-truncated,omitempty"`
	StderrTruncated bool `json:"stderr-truncated,omitempty"`
}

// MaxExecStdin bounds ExecRequest.Stdin.
const MaxExecStdin = 4 << 20

// Exec implements Machine: the command runs through the guest agent
// (guest-exec), with no network and no key, and Exec waits for it, bounded
// by ctx (without a deadline: DefaultExecTimeout).
func (m *localMachine) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	if len(req.Command) == 0 || req.Command[0] == "" {
		return ExecResult{}, fmt.Errorf("%w: exec: give the command to run", ErrInvalid)
	}
	if len(req.Stdin) > MaxExecStdin {
		return ExecResult{}, fmt.Errorf("%w: exec: stdin of %d bytes, more than the %d a guest-agent request carries here", ErrInvalid, len(req.Stdin), MaxExecStdin)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultExecTimeout)
		defer cancel()
	}
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return ExecResult{}, err
	}
	st, err := m.status(ctx, r)
	if err != nil {
		return ExecResult{}, err
	}
	if err := m.need("exec on", st.State, Running); err != nil {
		return ExecResult{}, err
	}
	d, err := m.drv(r)
	if err != nil {
		return ExecResult{}, err
	}
	if info := d.Info(); !info.Features.GuestAgent {
		return ExecResult{}, fmt.Errorf("%w: exec on machine %s: the %s driver has no guest agent", ErrUnsupported, m.name, info.Name)
	}
	a, err := d.Agent(ctx, m.ref(r))
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec on machine %s: the guest agent did not answer: %w", m.name, err)
	}
	defer a.Close()
	res, err := driver.Exec(ctx, a, driver.ExecRequest{Path: req.Command[0], Args: req.Command[1:], Env: req.Env, Stdin: req.Stdin})
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec on machine %s: %w", m.name, err)
	}
	return ExecResult{
		ExitCode: res.ExitCode, Signal: res.Signal, Stdout: res.Stdout, Stderr: res.Stderr,
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated,
	}, nil
}
