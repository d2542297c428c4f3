package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
)

// maxTunnelDial bounds the server's own connection to a machine's SSH
// endpoint (its wait for the machine's address comes from ?wait=).
const maxTunnelDial = 10 * time.Second

// tunnelSSH answers GET /v1/machines/{name}/ssh: with "Connection:
// Upgrade" and "Upgrade: vmfest-ssh" it connects to the machine's SSH
// endpoint as this server reaches it (vmfest.SSHEndpoint: the NAT forward
// on this host's loopback, or the host-only address), answers 101 and
// splices the two connections until either side ends or the server shuts
// down. The caller names no host or port: it is no general proxy, and it
// reaches only machines of this server that run. Until the 101, errors are
// the API's usual ones: 404 for an unknown machine, 409 with the state for
// one that does not run, 503 while the guest's SSH server does not answer
// (the caller retries), 504 when ?wait= runs out before the machine has an
// address.
func (s *Server) tunnelSSH(w http.ResponseWriter, r *http.Request) error {
	if r.ProtoMajor != 1 {
		return badRequest("the ssh tunnel needs HTTP/1.1 (this request came over %s): Upgrade does not exist in HTTP/2", r.Proto)
	}
	if !headerHas(r.Header, "Connection", "upgrade") || !strings.EqualFold(strings.TrimSpace(r.Header.Get("Upgrade")), wire.SSHUpgrade) {
		return badRequest("the ssh tunnel needs the headers \"Connection: Upgrade\" and \"Upgrade: %s\" (Upgrade: %q given)", wire.SSHUpgrade, r.Header.Get("Upgrade"))
	}
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	st, err := m.State(r.Context())
	if err != nil {
		return err
	}
	if st != vmfest.Running {
		return &vmfest.StateError{Machine: m.Name(), Op: "ssh to", State: st, Needs: []vmfest.State{vmfest.Running}}
	}
	wait, err := s.duration(r, "wait", 0)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	addr, err := vmfest.SSHEndpoint(ctx, m)
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, maxTunnelDial)
	defer cancel()
	var d net.Dialer
	guest, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		if r.Context().Err() != nil {
			return r.Context().Err()
		}
		return fmt.Errorf("%w: machine %s: its SSH server at %s does not answer (yet): %w", vmfest.ErrUnavailable, m.Name(), addr, err)
	}
	t, ok := s.tunnels.add()
	if !ok {
		guest.Close()
		return &httpError{status: http.StatusServiceUnavailable, code: wire.CodeUnavailable, msg: "the server is shutting down"}
	}
	defer s.tunnels.remove(t)
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		guest.Close()
		return fmt.Errorf("ssh tunnel to machine %s: %w", m.Name(), err)
	}
	if sw, ok := w.(*statusWriter); ok {
		sw.status = http.StatusSwitchingProtocols // for the metrics and the log
	}
	// The server's read and write timeouts are for requests, not for a
	// session that lasts as long as the user wants.
	conn.SetDeadline(time.Time{})
	begun := time.Now()
	s.log.Info("ssh tunnel opened", "machine", m.Name(), "endpoint", addr, "from", r.RemoteAddr)
	sent, received, err := splice(conn, brw, guest, t.stop)
	s.log.Info("ssh tunnel closed", "machine", m.Name(), "endpoint", addr, "from", r.RemoteAddr,
		"sent", sent, "received", received, "took", time.Since(begun).Round(time.Millisecond), "err", err)
	return nil
}

// splice answers 101 on the hijacked conn and copies both ways between it
// and guest until either side ends or stop closes; then it closes both.
// It returns the bytes sent to the guest and received from it, and the
// error that wrote the 101 if any.
func splice(conn net.Conn, brw *bufio.ReadWriter, guest net.Conn, stop <-chan struct{}) (sent, received int64, err error) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			conn.Close()
			guest.Close()
		})
	}
	defer closeBoth()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", wire.SSHUpgrade)
	if err := brw.Flush(); err != nil {
		return 0, 0, err
	}
	// What the caller sent after its request, already read into the
	// server's buffer, goes first.
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ := brw.Reader.Peek(n)
		if _, err := guest.Write(early); err != nil {
			return 0, 0, err
		}
		sent = int64(n)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		n, _ := io.Copy(guest, conn)
		sent += n
		closeBoth()
	}()
	go func() {
		defer wg.Done()
		n, _ := io.Copy(conn, guest)
		received = n
		closeBoth()
	}()
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-stop:
		closeBoth()
		<-done
	}
	return sent, received, nil
}

// headerHas reports whether the comma-separated header key has token
// (case-insensitively), as Connection: keep-alive, Upgrade does.
func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

// tunnelSet tracks the open SSH tunnels: http.Server.Shutdown does not
// see hijacked connections, so Server.Close ends them itself. The zero
// value is ready to use; it is safe for concurrent use.
type tunnelSet struct {
	mu     sync.Mutex
	closed bool
	open   map[*tunnel]struct{}
	wg     sync.WaitGroup
}

// tunnel is one open tunnel: stop closes when the server shuts down.
type tunnel struct{ stop chan struct{} }

// add registers a tunnel, or reports false once closeAll has run.
func (ts *tunnelSet) add() (*tunnel, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.closed {
		return nil, false
	}
	if ts.open == nil {
		ts.open = map[*tunnel]struct{}{}
	}
	t := &tunnel{stop: make(chan struct{})}
	ts.open[t] = struct{}{}
	ts.wg.Add(1)
	return t, true
}

// remove forgets a tunnel whose handler has returned.
func (ts *tunnelSet) remove(t *tunnel) {
	ts.mu.Lock()
	delete(ts.open, t)
	ts.mu.Unlock()
	ts.wg.Done()
}

// closeAll refuses new tunnels, tells the open ones to close and waits
// until their handlers have returned. Safe to call more than once.
func (ts *tunnelSet) closeAll() {
	ts.mu.Lock()
	if !ts.closed {
		ts.closed = true
		for t := range ts.open {
			close(t.stop)
		}
	}
	ts.mu.Unlock()
	ts.wg.Wait()
}
