package vmfest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"time"

	"github.com/vmfest/vmfest/api/wire"
)

var _ SSHDialer = (*remoteMachine)(nil)

// DialSSH implements SSHDialer: a connection to the machine's SSH server
// through its server's API (GET /v1/machines/{name}/ssh, upgraded to
// wire.SSHUpgrade), so the caller needs to reach only the server, not the
// guest nor the server's loopback forward. ctx bounds the dial, not the
// connection. The machine's errors come back as Local's do (ErrNotFound, a
// *StateError); a guest whose SSH server does not answer yet is
// ErrUnavailable.
func (m *remoteMachine) DialSSH(ctx context.Context) (net.Conn, error) {
	path := m.path("/ssh")
	if _, ok := ctx.Deadline(); ok {
		path += "?wait=" + remaining(ctx, 0)
	}
	var raw net.Conn
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { raw = info.Conn }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, m.r.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", wire.SSHUpgrade)
	if m.r.token != "" {
		req.Header.Set("Authorization", "Bearer "+m.r.token)
	}
	hc := m.r.client
	if tr, ok := hc.Transport.(*http.Transport); ok {
		// Upgrade is HTTP/1.1's: a clone that speaks nothing else, its
		// idle connections dropped once the answer is read.
		tr = tr.Clone()
		var p http.Protocols
		p.SetHTTP1(true)
		tr.Protocols = &p
		defer tr.CloseIdleConnections()
		hc = &http.Client{Transport: tr, Timeout: hc.Timeout}
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("vmfest server %s: %w", m.r.display, ctx.Err())
		}
		return nil, fmt.Errorf("vmfest server %s: %w", m.r.display, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		rwc, ok := resp.Body.(io.ReadWriteCloser)
		if !ok || !strings.EqualFold(resp.Header.Get("Upgrade"), wire.SSHUpgrade) {
			resp.Body.Close()
			return nil, fmt.Errorf("vmfest server %s: GET %s: switched to %q, not %s", m.r.display, path, resp.Header.Get("Upgrade"), wire.SSHUpgrade)
		}
		return &tunnelConn{ReadWriteCloser: rwc, raw: raw, remote: tunnelAddr(m.r.display + " " + m.name)}, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var we wire.Error
	if resp.StatusCode < 400 || json.Unmarshal(data, &we) != nil || we.Code == "" {
		return nil, fmt.Errorf("vmfest server %s: GET %s: %s, not 101 Switching Protocols: %s", m.r.display, path, resp.Status, strings.TrimSpace(string(data)))
	}
	return nil, errorFrom(we)
}

// sshVia says, in SSH's messages, how the connection goes.
func (m *remoteMachine) sshVia() string { return "through vmfest server " + m.r.display }

// tunnelConn is the net.Conn of an upgraded HTTP connection: its reads
// and writes go through the response body (which holds what the server
// sent right after its 101), its deadlines and local address are the
// underlying connection's when the transport showed it.
type tunnelConn struct {
	io.ReadWriteCloser
	raw    net.Conn // nil with a transport that does not tell
	remote net.Addr
}

func (c *tunnelConn) LocalAddr() net.Addr {
	if c.raw != nil {
		return c.raw.LocalAddr()
	}
	return tunnelAddr("")
}

func (c *tunnelConn) RemoteAddr() net.Addr { return c.remote }

func (c *tunnelConn) SetDeadline(t time.Time) error {
	if c.raw == nil {
		return errNoDeadline
	}
	return c.raw.SetDeadline(t)
}

func (c *tunnelConn) SetReadDeadline(t time.Time) error {
	if c.raw == nil {
		return errNoDeadline
	}
	return c.raw.SetReadDeadline(t)
}

func (c *tunnelConn) SetWriteDeadline(t time.Time) error {
	if c.raw == nil {
		return errNoDeadline
	}
	return c.raw.SetWriteDeadline(t)
}

var errNoDeadline = fmt.Errorf("ssh tunnel: deadlines: %w (the HTTP client's transport does not show its connection)", errors.ErrUnsupported)

// tunnelAddr is where a tunnel goes: the server's URL and the machine.
type tunnelAddr string

func (a tunnelAddr) Network() string { return wire.SSHUpgrade }
func (a tunnelAddr) String() string  { return string(a) }
