package api

import (
	"context"
	"crypto/tls"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/internal/testutil"
)

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestServeTLS serves over TCP with TLS and a token, and connects with
// vmfest.Connect: with the token it works, without it the error is a
// permission error, and plain HTTP is not answered as the API.
func TestServeTLS(t *testing.T) {
	e := newEnv(t)
	certPath, keyPath, pool := testutil.SelfSigned(t)
	addr := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- e.api.Serve(ctx, Listen{TCP: addr, TLSCert: certPath, TLSKey: keyPath, TokenFile: filepath.Join(e.home, TokenFile)})
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitListening(t, "tcp", addr, done)
	tlsCfg := &tls.Config{RootCAs: pool}
	qctx, qcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer qcancel()

	r, err := vmfest.Connect("https://"+addr, vmfest.WithToken(e.token), vmfest.WithTLSConfig(tlsCfg))
	if err != nil {
		t.Fatal(err)
	}
	m, err := r.Instance(qctx, "tls1", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := m.State(qctx); err != nil || st != vmfest.PoweredOff {
		t.Fatalf("state %s, %v", st, err)
	}

	anon, _ := vmfest.Connect("https://"+addr, vmfest.WithTLSConfig(tlsCfg))
	if _, err := anon.Machines(qctx); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("without a token: %v, want fs.ErrPermission", err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	req, _ := http.NewRequestWithContext(qctx, "DELETE", "https://"+addr+"/v1/machines/tls1", nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("destroy without a token: %d", resp.StatusCode)
	}
	if !e.machineExists(t, "tls1") {
		t.Fatal("destroyed without a token")
	}
	plain, _ := vmfest.Connect("http://"+addr, vmfest.WithToken(e.token))
	if _, err := plain.Machines(qctx); err == nil {
		t.Error("plain HTTP to a TLS listener answered")
	}
	untrusted, _ := vmfest.Connect("https://"+addr, vmfest.WithToken(e.token))
	if _, err := untrusted.Machines(qctx); err == nil {
		t.Error("an untrusted certificate was accepted")
	}
}

// TestServeRefusesOpenTCP: plain HTTP on every interface is refused before
// anything listens.
func TestServeRefusesOpenTCP(t *testing.T) {
	e := newEnv(t)
	sock := filepath.Join(e.home, SocketFile)
	err := e.api.Serve(context.Background(), Listen{Unix: sock, TCP: "0.0.0.0:0", TokenFile: filepath.Join(e.home, TokenFile)})
	if err == nil {
		t.Fatal("served plain HTTP on 0.0.0.0")
	}
	if _, err := os.Stat(sock); err == nil {
		t.Error("the Unix socket was opened before the TCP address was refused")
	}
}

// TestRemoteReusesConnections: a Remote's calls share one connection
// (each answer is read to its end), so TLS does not handshake per call.
func TestRemoteReusesConnections(t *testing.T) {
	e := newEnv(t)
	var conns atomic.Int32
	ts := httptest.NewUnstartedServer(RequireToken(e.api.Handler(), filepath.Join(e.home, TokenFile)))
	ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	ts.Start()
	defer ts.Close()
	r, err := vmfest.Connect(ts.URL, vmfest.WithToken(e.token))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m, err := r.Instance(ctx, "reuse", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := r.Machines(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Info(ctx); err != nil {
			t.Fatal(err)
		}
		if err := m.Pause(ctx); err == nil {
			t.Fatal("paused a powered-off machine")
		}
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 17 sequential calls, want 1", n)
	}
}

// countingTransport counts the requests it carries.
type countingTransport struct {
	n    atomic.Int32
	next http.RoundTripper
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.next.RoundTrip(r)
}

// TestRemoteWithHTTPClient: a caller's HTTP client carries every request.
func TestRemoteWithHTTPClient(t *testing.T) {
	e := newEnv(t)
	tr := &countingTransport{next: e.http.Client().Transport}
	r, err := vmfest.Connect(e.http.URL, vmfest.WithToken(e.token), vmfest.WithHTTPClient(&http.Client{Transport: tr}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Machines(context.Background()); err != nil {
		t.Fatal(err)
	}
	if tr.n.Load() == 0 {
		t.Fatal("the caller's HTTP client carried no request")
	}
}
