package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
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
