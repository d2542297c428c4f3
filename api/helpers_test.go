package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

// env is a served Local over a fresh state directory: the API's handler,
// an httptest server requiring the token in front of it, a directory the
// server allows, and a blank disk image in it.
type env struct {
	home    string
	local   *vmfest.Local
	api     *Server
	http    *httptest.Server // token required
	token   string
	allowed string
	blank   spec.Image
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// envOption changes the configuration of an env's Local or API server.
type envOption func(*vmfest.Config, *Config)

// newEnv builds an env. Cleanup kills any QEMU left and removes the
// directories.
func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	home, err := os.MkdirTemp("", "vmfa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // runs last
		testutil.KillMachines(home)
		os.RemoveAll(home)
	})
	lcfg := vmfest.Config{Home: home, Accel: os.Getenv("VMFEST_ACCEL"), Logger: quiet()}
	allowed := filepath.Join(home, "allowed")
	cfg := Config{Home: home, AllowPaths: []string{allowed}, Logger: quiet()}
	for _, o := range opts {
		o(&lcfg, &cfg)
	}
	l, err := vmfest.NewLocal(lcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(allowed, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), l, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tokenPath := filepath.Join(home, TokenFile)
	tok, err := LoadToken(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(RequireToken(s.Handler(), tokenPath))
	t.Cleanup(ts.Close)
	return &env{home: home, local: l, api: s, http: ts, token: tok, allowed: allowed, blank: testutil.BlankImage(t, allowed, "blank.raw")}
}

// natOnly is hardware that needs no host network.
var natOnly = &spec.Hardware{MemorySize: 128, CPUCount: 1, Network: []spec.NIC{{AttachmentType: "nat"}}}

// do sends a request with the token to the httptest server and returns the
// status and body.
func (e *env) do(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	return e.doAuth(t, method, path, body, "Bearer "+e.token)
}

func (e *env) doAuth(t *testing.T, method, path string, body any, auth string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, e.http.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data
}

// machineExists reports whether the Local server has the machine.
func (e *env) machineExists(t *testing.T, name string) bool {
	t.Helper()
	_, err := e.local.FindMachine(context.Background(), name)
	return err == nil
}

func createBody(name string, im spec.Image) map[string]any {
	return map[string]any{"name": name, "image": map[string]any{"spec": im}, "hardware": map[string]any{"spec": natOnly}}
}

// waitListening waits (at most 30 s) until addr accepts connections,
// failing the test if Serve returns on done first.
func waitListening(t *testing.T, network, addr string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial(network, addr)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-done:
			t.Fatalf("serve returned before listening on %s: %v", addr, err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not listen on %s %s within 30s: %v", network, addr, err)
		}
	}
}
