package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// QMP is a client connection to a QEMU Machine Protocol socket. It is not
// safe for concurrent use; QEMU serves one QMP client per socket at a time,
// so connections should be short-lived.
//
// vmfest has its own client rather than digitalocean/go-qemu's qmp package
// because every exchange here must be bounded by a context (go-qemu's Run
// blocks without deadline when QEMU stops answering) and events need no
// background goroutine. See docs/dependencies.md.
type QMP struct {
	c *rpcConn
}

// newQMP speaks QMP over c, whose greeting has been read.
func newQMP(c *lineConn) *QMP {
	return &QMP{c: newRPCConn(c, protocol{
		name:     "qmp",
		lineWait: DefaultTimeout,
		newError: func(command, class, desc string) error {
			return &QMPError{Command: command, Class: class, Desc: desc}
		},
	})}
}

// QMPError is an error QEMU returned for a command.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// DialQMP connects to the QMP socket at path and negotiates capabilities.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	c, err := dialUnix(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("connect to QMP at %s: %w", path, err)
	}
	// QEMU keeps a monitor's unsent output across connections: a reply to
	// a command whose client gave up (say, while QEMU was stopped) can
	// reach the next client before its greeting. Such lines are skipped,
	// and ids carry a per-connection prefix so that a stale reply is never
	// taken for a fresh one.
	for {
		greeting, err := c.readLine(ctx, deadline(ctx))
		if err != nil {
			c.Close()
			return nil, timeoutErr("QMP greeting", err)
		}
		var g struct {
			QMP    json.RawMessage `json:"QMP"`
			Return json.RawMessage `json:"return"`
			Error  json.RawMessage `json:"error"`
			Event  string          `json:"event"`
		}
		if err := json.Unmarshal(greeting, &g); err != nil || (g.QMP == nil && g.Return == nil && g.Error == nil && g.Event == "") {
			c.Close()
			return nil, fmt.Errorf("QMP greeting: not a QMP server: %q", truncate(greeting))
		}
		if g.QMP != nil {
			break
		}
	}
	q := newQMP(c)
	if _, err := q.Execute(ctx, "qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// Execute runs one command and returns its "return" value. Events that
// arrive meanwhile are skipped.
func (q *QMP) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	return q.c.execute(ctx, command, args)
}

// Close ends the connection.
func (q *QMP) Close() error { return q.c.Close() }

// RunQMP connects, runs one command and disconnects.
func RunQMP(ctx context.Context, socket, command string, args any) (json.RawMessage, error) {
	q, err := DialQMP(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	return q.Execute(ctx, command, args)
}

// Status is QEMU's run state as query-status reports it.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus asks QEMU for its run state.
func QueryStatus(ctx context.Context, socket string) (Status, error) {
	raw, err := RunQMP(ctx, socket, "query-status", nil)
	if err != nil {
		return Status{}, err
	}
	var s Status
	if err := json.Unmarshal(raw, &s); err != nil {
		return Status{}, fmt.Errorf("qmp query-status: %w", err)
	}
	return s, nil
}

// SendFD hands f to QEMU under name (QMP getfd, the descriptor passed with
// SCM_RIGHTS beside the command), for a later command that names it (a
// migration URI fd:name). QEMU keeps its own duplicate: f stays open here.
func (q *QMP) SendFD(ctx context.Context, name string, f *os.File) error {
	uc, ok := q.c.conn.(*net.UnixConn)
	if !ok {
		return errors.New("qmp getfd: the QMP connection is not a Unix socket")
	}
	q.c.nextID++
	id := q.c.prefix + strconv.Itoa(q.c.nextID)
	msg, err := json.Marshal(request{Execute: "getfd", Arguments: map[string]string{"fdname": name}, ID: id})
	if err != nil {
		return fmt.Errorf("qmp getfd: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	uc.SetWriteDeadline(deadline(ctx))
	if _, _, err := uc.WriteMsgUnix(append(msg, '\n'), unix.UnixRights(int(f.Fd())), nil); err != nil {
		return timeoutErr("qmp getfd", err)
	}
	_, err = q.c.receive(ctx, "getfd", id)
	return err
}
