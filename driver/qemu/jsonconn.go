package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultTimeout bounds a QMP or guest-agent exchange when the caller's
// context has no deadline, so an unresponsive QEMU never hangs a caller.
const DefaultTimeout = 10 * time.Second

// lineConn reads newline-delimited JSON messages from a stream socket with
// deadlines taken from a context.
type lineConn struct {
	conn net.Conn
	buf  []byte
}

// dialUnix connects to a QEMU socket. QEMU's monitor and chardev servers
// take one client at a time and leave the others in a short listen queue;
// when that queue is full connect fails with EAGAIN. Such a connect, and a
// refused one while the pidfile in the socket's directory says QEMU is
// alive (it is still setting up or just closed the previous client), is
// retried with jittered backoff until ctx is done, so concurrent callers in
// one or many processes take turns instead of failing.
func dialUnix(ctx context.Context, path string) (*lineConn, error) {
	var d net.Dialer
	wait := time.Millisecond
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return &lineConn{conn: conn}, nil
		}
		retry := errors.Is(err, syscall.EAGAIN)
		if !retry && errors.Is(err, syscall.ECONNREFUSED) {
			_, alive, _ := PID(filepath.Dir(path))
			retry = alive
		}
		if !retry || ctx.Err() != nil {
			return nil, err
		}
		t := time.NewTimer(wait/2 + rand.N(wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (QEMU kept the socket busy until the deadline)", err)
		case <-t.C:
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

func deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(DefaultTimeout)
}

func (c *lineConn) write(ctx context.Context, msg []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.conn.SetWriteDeadline(deadline(ctx))
	_, err := c.conn.Write(msg)
	return err
}

// readLine returns the next line (without its newline), waiting no later
// than until. Partial lines survive a timeout and are completed by the
// next call.
func (c *lineConn) readLine(ctx context.Context, until time.Time) ([]byte, error) {
	if d := deadline(ctx); d.Before(until) {
		until = d
	}
	for {
		if i := bytes.IndexByte(c.buf, '\n'); i >= 0 {
			line := bytes.TrimRight(c.buf[:i], "\r")
			out := append([]byte(nil), line...)
			c.buf = c.buf[i+1:]
			return out, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if len(c.buf) > 16<<20 {
			return nil, errors.New("reply line longer than 16 MiB")
		}
		c.conn.SetReadDeadline(until)
		var chunk [4096]byte
		n, err := c.conn.Read(chunk[:])
		c.buf = append(c.buf, chunk[:n]...)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
	}
}

func (c *lineConn) Close() error { return c.conn.Close() }

// ErrTimeout is wrapped by errors of exchanges that ran out of time.
var ErrTimeout = errors.New("timed out")

func timeoutErr(what string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w: %w", what, ErrTimeout, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// QMP and the guest agent speak the same request/reply protocol over a
// lineConn: a request {"execute", "arguments", "id"} and a reply line
// {"return": …} or {"error": {"class", "desc"}} that echoes the id, among
// lines that are not replies to it. rpcConn is that protocol, once for both
// clients; the handshakes (QMP's greeting and capabilities, the agent's
// guest-sync-delimited) stay with each client.

// protocol is what differs between the two users of rpcConn.
type protocol struct {
	// name starts every error message ("qmp", "guest agent").
	name string
	// lineWait, when positive, bounds the wait for each reply line below
	// the context's deadline: QEMU answers QMP at once or has hung. Zero
	// waits as long as the context allows (DefaultTimeout without a
	// deadline), as a guest may take its time.
	lineWait time.Duration
	// newError makes the client's error type from an "error" reply.
	newError func(command, class, desc string) error
}

// rpcConn sends commands with ids unique to the connection and reads back
// their replies. It is not safe for concurrent use.
type rpcConn struct {
	*lineConn
	proto  protocol
	prefix string // per connection, so a stale reply never matches
	nextID int
}

func newRPCConn(c *lineConn, p protocol) *rpcConn {
	return &rpcConn{lineConn: c, proto: p, prefix: fmt.Sprintf("vmfest-%x-", rand.Uint32())}
}

// request is the wire form of a command.
type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        string `json:"id"`
}

// reply is the wire form of every line a server sends after its greeting.
type reply struct {
	ID     json.RawMessage `json:"id"`
	Event  string          `json:"event"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// execute sends command and returns the "return" value of its reply.
func (c *rpcConn) execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	id, err := c.send(ctx, command, args)
	if err != nil {
		return nil, err
	}
	return c.receive(ctx, command, id)
}

// send writes command with a fresh id and returns the id.
func (c *rpcConn) send(ctx context.Context, command string, args any) (string, error) {
	c.nextID++
	id := c.prefix + strconv.Itoa(c.nextID)
	msg, err := json.Marshal(request{Execute: command, Arguments: args, ID: id})
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", c.proto.name, command, err)
	}
	if err := c.write(ctx, append(msg, '\n')); err != nil {
		return "", timeoutErr(c.proto.name+" "+command, err)
	}
	return id, nil
}

// receive reads lines until the reply to the command sent with id and
// decodes it. It skips events, replies that carry another id (to a command
// an earlier client gave up on) and lines holding 0xFF (the delimited late
// answers to guest-sync-delimited; never part of a JSON reply). A reply
// without an id is taken as the answer: servers echo the id, but a minimal
// one may not.
func (c *rpcConn) receive(ctx context.Context, command, id string) (json.RawMessage, error) {
	what := c.proto.name + " " + command
	for {
		until := deadline(ctx)
		if c.proto.lineWait > 0 {
			until = time.Now().Add(c.proto.lineWait)
		}
		line, err := c.readLine(ctx, until)
		if err != nil {
			return nil, timeoutErr(what, err)
		}
		if bytes.IndexByte(line, 0xff) >= 0 {
			continue
		}
		var r reply
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("%s: malformed reply %q", what, truncate(line))
		}
		if r.Event != "" {
			continue
		}
		if r.ID == nil && r.Error != nil && strings.HasPrefix(r.Error.Desc, "JSON parse error") {
			// A complaint about bytes that are not our request (which is
			// always valid JSON): qemu-ga answers the 0xFF of a sync an
			// earlier client queued before the agent started, at times
			// only after later requests, and with no id to tell it by.
			continue
		}
		if r.ID != nil {
			var got string
			if json.Unmarshal(r.ID, &got) != nil || got != id {
				continue
			}
		}
		switch {
		case r.Error != nil:
			return nil, c.proto.newError(command, r.Error.Class, r.Error.Desc)
		case r.Return == nil:
			return nil, fmt.Errorf("%s: reply has neither return nor error: %q", what, truncate(line))
		}
		return r.Return, nil
	}
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}
