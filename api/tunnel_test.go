package api

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/internal/testutil"
)

// tunnelGet sends GET path with the given Upgrade header ("" for none)
// and token, and returns the status and body of an answer that is not a
// 101.
func tunnelGet(t *testing.T, e *env, path, upgrade, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.http.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if upgrade != "" {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", upgrade)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// echoAt serves, on the loopback address addr (a machine's SSH forward,
// which the fake driver does not bind), a server that echoes what it
// reads, standing in for the guest's SSH server; it closes a connection on
// reading "Q". Each connection's end is sent on the returned channel.
func echoAt(t *testing.T, addr string) <-chan struct{} {
	t.Helper()
	ended := make(chan struct{}, 16)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() {
					c.Close()
					ended <- struct{}{}
				}()
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 && buf[n-1] == 'Q' {
						return
					}
					if _, werr := c.Write(buf[:n]); err != nil || werr != nil {
						return
					}
				}
			}()
		}
	}()
	return ended
}

// runningFake creates and starts a NAT machine on the fake driver and
// returns it (through the Remote) and its SSH forward's address.
func runningFake(t *testing.T, ctx context.Context, e *env, r *vmfest.Remote, name string) (vmfest.Machine, string) {
	t.Helper()
	m, err := r.Instance(ctx, name, vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil || len(info.Networks) == 0 || info.Networks[0].SSH == "" {
		t.Fatalf("no SSH forward: %+v, %v", info.Networks, err)
	}
	return m, info.Networks[0].SSH
}

// echoes writes msg on c and reads it back within 10 s.
func echoes(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write through the tunnel: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("read through the tunnel: %q, %v; want %q", got, err, msg)
	}
	c.SetReadDeadline(time.Time{})
}

// TestTunnelErrors: GET /v1/machines/{name}/ssh answers as the other
// endpoints do until it can connect, and the Remote's DialSSH returns
// those errors as Local's values.
func TestTunnelErrors(t *testing.T) {
	fk := fake.New(fake.Options{})
	e, r := fakeRemote(t, fk)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	running, _ := runningFake(t, ctx, e, r, "up") // nothing listens on its forward
	off, err := r.Instance(ctx, "off", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, path, upgrade, token string
		status                     int
		says                       string
	}{
		{"no upgrade header", "/v1/machines/up/ssh", "", e.token, http.StatusBadRequest, `\"Upgrade: vmfest-ssh\"`},
		{"another protocol", "/v1/machines/up/ssh", "websocket", e.token, http.StatusBadRequest, `Upgrade: \"websocket\" given`},
		{"no token", "/v1/machines/up/ssh", wire.SSHUpgrade, "", http.StatusUnauthorized, ""},
		{"bad name", "/v1/machines/..x/ssh", wire.SSHUpgrade, e.token, http.StatusBadRequest, "machine"},
		{"unknown machine", "/v1/machines/nope/ssh", wire.SSHUpgrade, e.token, http.StatusNotFound, "nope"},
		{"powered off", "/v1/machines/off/ssh", wire.SSHUpgrade, e.token, http.StatusConflict, `"state":"powered-off"`},
		{"guest not answering", "/v1/machines/up/ssh", wire.SSHUpgrade, e.token, http.StatusServiceUnavailable, "does not answer"},
		{"bad wait", "/v1/machines/up/ssh?wait=soon", wire.SSHUpgrade, e.token, http.StatusBadRequest, "?wait="},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, body := tunnelGet(t, e, c.path, c.upgrade, c.token)
			if status != c.status || !strings.Contains(body, c.says) {
				t.Fatalf("%d %s; want %d saying %s", status, body, c.status, c.says)
			}
		})
	}

	dial := func(m vmfest.Machine) error {
		d, ok := m.(vmfest.SSHDialer)
		if !ok {
			t.Fatalf("a Remote's machine is no SSHDialer")
		}
		c, err := d.DialSSH(ctx)
		if err == nil {
			c.Close()
		}
		return err
	}
	var se *vmfest.StateError
	if err := dial(off); !errors.As(err, &se) || se.State != vmfest.PoweredOff || se.Op != "ssh to" {
		t.Errorf("DialSSH of a powered-off machine: %v, want a *StateError", err)
	}
	if err := dial(running); !errors.Is(err, vmfest.ErrUnavailable) {
		t.Errorf("DialSSH with nothing on the guest's port: %v, want ErrUnavailable", err)
	}
	if err := running.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dial(running); !errors.As(err, &se) || se.State != vmfest.Paused {
		t.Errorf("DialSSH of a paused machine: %v, want a *StateError", err)
	}
	if err := off.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dial(off); !errors.Is(err, vmfest.ErrNotFound) {
		t.Errorf("DialSSH of a destroyed machine: %v, want ErrNotFound", err)
	}
}

// TestTunnelSplices: bytes go both ways through the tunnel to what
// listens on the machine's SSH forward; the dial's context bounds only
// the dial; either side closing ends the other.
func TestTunnelSplices(t *testing.T) {
	fk := fake.New(fake.Options{})
	e, r := fakeRemote(t, fk)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, addr := runningFake(t, ctx, e, r, "echo")
	ended := echoAt(t, addr)

	dctx, dcancel := context.WithCancel(ctx)
	c, err := m.(vmfest.SSHDialer).DialSSH(dctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dcancel() // the dial is over: the connection stays
	echoes(t, c, "SSH-2.0-test\r\n")
	echoes(t, c, strings.Repeat("x", 1<<20)) // more than any buffer
	if c.RemoteAddr().Network() != wire.SSHUpgrade || !strings.Contains(c.RemoteAddr().String(), "echo") {
		t.Errorf("remote address %s %s", c.RemoteAddr().Network(), c.RemoteAddr())
	}

	// The guest's side closing ends the caller's.
	if _, err := io.WriteString(c, "Q"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after the guest closed: %d, %v; want EOF", n, err)
	}
	c.Close()
	<-ended
	// The caller's side closing ends the guest's: a new tunnel works.
	c2, err := m.(vmfest.SSHDialer).DialSSH(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	echoes(t, c2, "again")
	c2.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the guest's side stayed open after the caller closed")
	}
}

// TestServeShutdownEndsTunnels: `vmfest serve`'s shutdown closes an open
// tunnel (http.Server.Shutdown does not see hijacked connections) and is
// not held up by it.
func TestServeShutdownEndsTunnels(t *testing.T) {
	fk := fake.New(fake.Options{})
	e := newEnv(t, withDriver(fk))
	addr := freePort(t)
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- e.api.Serve(sctx, Listen{TCP: addr, TokenFile: filepath.Join(e.home, TokenFile)})
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("serve did not return")
		}
	})
	waitListening(t, "tcp", addr, done)
	r, err := vmfest.Connect("http://"+addr, vmfest.WithToken(e.token))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, fwd := runningFake(t, ctx, e, r, "held")
	echoAt(t, fwd)
	c, err := m.(vmfest.SSHDialer).DialSSH(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoes(t, c, "open")

	begun := time.Now()
	stop()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("the tunnel is still open after shutdown: read %d, %v", n, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(8 * time.Second): // Shutdown's own bound is 10 s
		t.Fatal("serve's shutdown is held up by the open tunnel")
	}
	t.Logf("shutdown with an open tunnel took %s", time.Since(begun).Round(time.Millisecond))
	done <- nil // for the cleanup
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestTunnelOverTLS: over https (serve --tls-cert) the tunnel upgrades
// and carries bytes as over plain HTTP.
func TestTunnelOverTLS(t *testing.T) {
	fk := fake.New(fake.Options{})
	e := newEnv(t, withDriver(fk))
	certPath, keyPath, pool := testutil.SelfSigned(t)
	addr := freePort(t)
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- e.api.Serve(sctx, Listen{TCP: addr, TLSCert: certPath, TLSKey: keyPath, TokenFile: filepath.Join(e.home, TokenFile)})
	}()
	t.Cleanup(func() { stop(); <-done })
	waitListening(t, "tcp", addr, done)
	r, err := vmfest.Connect("https://"+addr, vmfest.WithToken(e.token), vmfest.WithTLSConfig(&tls.Config{RootCAs: pool}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, fwd := runningFake(t, ctx, e, r, "tls")
	echoAt(t, fwd)
	c, err := m.(vmfest.SSHDialer).DialSSH(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoes(t, c, "over TLS")
}
