package qga

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os/exec"
	"sync"
	"syscall"
)

// MaxExecOutput is the default bound on what guest-exec captures of one
// output stream of one process; what the process writes beyond it is read
// and dropped (so the process never blocks on a full pipe) and the stream's
// truncated flag is set. qemu-ga keeps up to 16 MiB; this agent keeps less
// so that a reply carrying both streams, base64-encoded (4/3 larger), stays
// within the 16 MiB reply line vmfest's host side reads.
const MaxExecOutput = 4 << 20

// Capture modes of guest-exec's capture-output (QEMU's
// GuestExecCaptureOutputMode); the boolean true means separated.
const (
	CaptureNone      = "none"
	CaptureStdout    = "stdout"
	CaptureStderr    = "stderr"
	CaptureSeparated = "separated"
	CaptureMerged    = "merged"
)

// ExecStarted is guest-exec's reply (QEMU's GuestExec).
type ExecStarted struct {
	PID int `json:"pid"`
}

// ExecStatus is guest-exec-status's reply (QEMU's GuestExecStatus), in the
// schema's key order. Before the process has exited only Exited (false) is
// set. Once it has: ExitCode when it exited, Signal when a signal ended it;
// OutData and ErrData (base64) when that stream was captured and is not
// empty, each with its truncated flag beside it.
type ExecStatus struct {
	Exited       bool   `json:"exited"`
	ExitCode     *int   `json:"exitcode,omitempty"`
	Signal       *int   `json:"signal,omitempty"`
	OutData      string `json:"out-data,omitempty"`
	ErrData      string `json:"err-data,omitempty"`
	OutTruncated *bool  `json:"out-truncated,omitempty"`
	ErrTruncated *bool  `json:"err-truncated,omitempty"`
}

// execTable holds the processes guest-exec started until guest-exec-status
// has returned their exit.
type execTable struct {
	mu    sync.Mutex
	procs map[int]*execProc
}

// execProc is one process started by guest-exec. out and errs are written
// only by the goroutines os/exec runs for the pipes, and read only after
// done is closed (which happens after those goroutines ended).
type execProc struct {
	done  chan struct{}
	state syscall.WaitStatus
	out   *boundedBuffer // nil when stdout is not captured
	errs  *boundedBuffer // nil when stderr is not captured (or merged)
}

// boundedBuffer keeps the first limit bytes written to it and drops the
// rest, remembering that it did.
type boundedBuffer struct {
	limit     int
	buf       bytes.Buffer
	truncated bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if room := b.limit - b.buf.Len(); len(p) > room {
		b.truncated = true
		b.buf.Write(p[:max(room, 0)])
	} else {
		b.buf.Write(p)
	}
	return len(p), nil
}

// status is the process's GuestExecStatus once it has exited.
func (p *execProc) status() ExecStatus {
	st := ExecStatus{Exited: true}
	switch {
	case p.state.Exited():
		code := p.state.ExitStatus()
		st.ExitCode = &code
	case p.state.Signaled():
		sig := int(p.state.Signal())
		st.Signal = &sig
	}
	if p.out != nil && p.out.buf.Len() > 0 {
		st.OutData = base64.StdEncoding.EncodeToString(p.out.buf.Bytes())
		st.OutTruncated = &p.out.truncated
	}
	if p.errs != nil && p.errs.buf.Len() > 0 {
		st.ErrData = base64.StdEncoding.EncodeToString(p.errs.buf.Bytes())
		st.ErrTruncated = &p.errs.truncated
	}
	return st
}

// parseCapture reads capture-output: absent, a boolean, or a mode name.
func parseCapture(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return CaptureNone, nil
	}
	var flag bool
	if json.Unmarshal(raw, &flag) == nil {
		if flag {
			return CaptureSeparated, nil
		}
		return CaptureNone, nil
	}
	var mode string
	if json.Unmarshal(raw, &mode) != nil {
		return "", Errorf("Invalid parameter type for 'capture-output', expected: GuestExecCaptureOutput")
	}
	switch mode {
	case CaptureNone, CaptureStdout, CaptureStderr, CaptureSeparated, CaptureMerged:
		return mode, nil
	}
	return "", Errorf("Parameter 'capture-output' does not accept value '%s'", mode)
}

// exec implements guest-exec: it starts path with arg (argv[1:]) and env
// (the whole environment; absent: the agent's own), searching PATH for a
// path without a slash; input-data (base64) is its standard input, else
// /dev/null. Uncaptured output goes to /dev/null. The process counts as
// exited once it has been reaped and its captured pipes are closed, as in
// qemu-ga.
func (a *Agent) exec(args json.RawMessage) (any, error) {
	var p struct {
		Path          *string         `json:"path"`
		Arg           []string        `json:"arg"`
		Env           []string        `json:"env"`
		InputData     *string         `json:"input-data"`
		CaptureOutput json.RawMessage `json:"capture-output"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	if p.Path == nil {
		return nil, Errorf("Parameter 'path' is missing")
	}
	capture, err := parseCapture(p.CaptureOutput)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(*p.Path, p.Arg...)
	cmd.Env = p.Env // nil (absent) inherits the agent's environment
	if p.InputData != nil {
		in, err := base64.StdEncoding.DecodeString(*p.InputData)
		if err != nil {
			return nil, Errorf("Invalid parameter 'input-data': not base64: %v", err)
		}
		cmd.Stdin = bytes.NewReader(in)
	}
	limit := a.ExecOutputLimit
	if limit <= 0 {
		limit = MaxExecOutput
	}
	proc := &execProc{done: make(chan struct{})}
	switch capture {
	case CaptureStdout:
		proc.out = &boundedBuffer{limit: limit}
	case CaptureStderr:
		proc.errs = &boundedBuffer{limit: limit}
	case CaptureSeparated:
		proc.out = &boundedBuffer{limit: limit}
		proc.errs = &boundedBuffer{limit: limit}
	case CaptureMerged:
		proc.out = &boundedBuffer{limit: limit}
	}
	// A nil *boundedBuffer must stay a nil io.Writer (os/exec then opens
	// /dev/null).
	if proc.out != nil {
		cmd.Stdout = proc.out
		if capture == CaptureMerged {
			cmd.Stderr = proc.out // the same writer: os/exec serialises its writes
		}
	}
	if proc.errs != nil {
		cmd.Stderr = proc.errs
	}
	if err := cmd.Start(); err != nil {
		return nil, Errorf("Guest agent command failed, error was '%v'", err)
	}
	pid := cmd.Process.Pid
	go func() {
		cmd.Wait() // reaps the child; its exit is in ProcessState whatever Wait returns
		if cmd.ProcessState != nil {
			proc.state, _ = cmd.ProcessState.Sys().(syscall.WaitStatus)
		}
		close(proc.done)
	}()
	a.execs.mu.Lock()
	if a.execs.procs == nil {
		a.execs.procs = map[int]*execProc{}
	}
	a.execs.procs[pid] = proc
	a.execs.mu.Unlock()
	a.logf("guest-exec %s: pid %d", *p.Path, pid)
	return ExecStarted{PID: pid}, nil
}

// execStatus implements guest-exec-status: {"exited": false} while the
// process runs; once it has exited, its status, after which the pid is
// forgotten (a second call for it fails, as an unknown pid does).
func (a *Agent) execStatus(args json.RawMessage) (any, error) {
	var p struct {
		PID *json.Number `json:"pid"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	if p.PID == nil {
		return nil, Errorf("Parameter 'pid' is missing")
	}
	pid, err := p.PID.Int64()
	if err != nil {
		return nil, Errorf("Invalid parameter type for 'pid', expected: integer")
	}
	a.execs.mu.Lock()
	defer a.execs.mu.Unlock()
	proc, ok := a.execs.procs[int(pid)]
	if !ok || int64(int(pid)) != pid {
		return nil, Errorf("Invalid parameter 'pid'")
	}
	select {
	case <-proc.done:
	default:
		return ExecStatus{}, nil
	}
	delete(a.execs.procs, int(pid))
	return proc.status(), nil
}
