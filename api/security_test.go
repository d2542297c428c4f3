package api

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
)

// natBody is a create request for a NAT-only machine with one rule.
func natBody(name string, im spec.Image, hostIP string, port int) map[string]any {
	hw := &spec.Hardware{MemorySize: 128, CPUCount: 1, Network: []spec.NIC{
		{AttachmentType: "nat"},
		{AttachmentType: "nat", NATRules: []spec.NATRule{{Name: "web", HostIP: hostIP, HostPort: port, GuestPort: 80}}},
	}}
	return map[string]any{"name": name, "image": map[string]any{"spec": im}, "hardware": map[string]any{"spec": hw}}
}

// TestNATRulesPolicy: a caller's NAT rule listens on loopback and a port
// from 1024 up unless the operator allows more (vmfest.Config.NAT); an
// IPv4-mapped address is bad input (400 naming the field), never a 500.
func TestNATRulesPolicy(t *testing.T) {
	strict := newEnv(t)
	open := newEnv(t, func(l *vmfest.Config, _ *Config) {
		l.NAT = spec.NATPolicy{HostAddresses: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, LowPorts: true}
	})
	for _, tc := range []struct {
		name   string
		e      *env
		hostIP string
		port   int
		status int
		want   string
	}{
		{"loopback", strict, "127.0.0.1", 18080, 201, ""},
		{"wildcard", strict, "0.0.0.0", 18080, 400, "network[1].nat-rules[0].host-ip: 0.0.0.0 is outside"},
		{"low port", strict, "127.0.0.1", 80, 400, "network[1].nat-rules[0].host-port: 80 is below 1024"},
		{"mapped loopback", strict, "::ffff:127.0.0.1", 18080, 400, "write it as 127.0.0.1"},
		{"mapped loopback, open policy", open, "::ffff:127.0.0.1", 18080, 400, "write it as 127.0.0.1"},
		{"wildcard, open policy", open, "0.0.0.0", 18080, 201, ""},
		{"low port, open policy", open, "127.0.0.1", 80, 201, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "nat" + strings.NewReplacer(" ", "", ",", "").Replace(tc.name)
			status, body := tc.e.do(t, "POST", "/v1/machines", natBody(name, tc.e.blank, tc.hostIP, tc.port))
			if status != tc.status {
				t.Fatalf("create: %d %s, want %d", status, body, tc.status)
			}
			if status >= 400 {
				we := decodeError(t, body)
				if we.Code != wire.CodeInvalid || !strings.Contains(we.Error, tc.want) {
					t.Fatalf("error %+v, want code invalid saying %q", we, tc.want)
				}
				if tc.e.machineExists(t, name) {
					t.Fatal("a machine was created")
				}
				return
			}
			if status, body := tc.e.do(t, "DELETE", "/v1/machines/"+name, nil); status != http.StatusNoContent {
				t.Fatalf("destroy: %d %s", status, body)
			}
		})
	}
}

// TestTokenFileRecheckedOnUse: a token file made readable by others, or
// given to another owner, after the server read it stops being honoured at
// the next request (the server answers 503 and says why); put right, it
// works again. chmod and chown change neither mtime nor size.
func TestTokenFileRecheckedOnUse(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(e.home, TokenFile)
	if status, body := e.do(t, "GET", "/v1/machines", nil); status != http.StatusOK {
		t.Fatalf("before: %d %s", status, body)
	}
	for _, tc := range []struct {
		name       string
		spoil, fix func() error
		want       string
	}{
		{"group and others may read it", func() error { return os.Chmod(path, 0o644) }, func() error { return os.Chmod(path, 0o600) }, "lets others"},
		{"group may read it", func() error { return os.Chmod(path, 0o640) }, func() error { return os.Chmod(path, 0o600) }, "lets others"},
		{"another owner", func() error { return os.Chown(path, 65534, -1) }, func() error { return os.Chown(path, os.Geteuid(), -1) }, "owned by"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.spoil(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tc.fix() })
			status, body := e.do(t, "GET", "/v1/machines", nil)
			if status != http.StatusServiceUnavailable {
				t.Fatalf("with the spoiled token file: %d %s, want 503", status, body)
			}
			if we := decodeError(t, body); we.Code != wire.CodeUnavailable || !strings.Contains(we.Error, tc.want) {
				t.Fatalf("error %+v, want it to say %q", we, tc.want)
			}
			if _, err := LoadToken(path); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadToken: %v, want it to say %q", err, tc.want)
			}
			if err := tc.fix(); err != nil {
				t.Fatal(err)
			}
			if status, body := e.do(t, "GET", "/v1/machines", nil); status != http.StatusOK {
				t.Fatalf("put right: %d %s", status, body)
			}
		})
	}
}

// TestServeUnixKeepsOtherFiles: serve --unix PATH replaces only a stale
// socket; a regular file, a directory, a symlink or a live socket at PATH
// is refused and left as it was.
func TestServeUnixKeepsOtherFiles(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		make func(path string) error
		want string // "" when serving must succeed
	}{
		{"regular file", func(p string) error { return os.WriteFile(p, []byte("keep me"), 0o600) }, "not a socket"},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }, "not a socket"},
		{"symlink to a file", func(p string) error { return os.Symlink(target, p) }, "not a socket"},
		{"stale socket", func(p string) error {
			l, err := net.Listen("unix", p)
			if err != nil {
				return err
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			return l.Close()
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := tc.make(path); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Lstat(path)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s, err := New(ctx, e.local, Config{Home: e.home, Logger: quiet()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			done := make(chan error, 1)
			go func() { done <- s.Serve(ctx, Listen{Unix: path}) }()
			if tc.want != "" {
				select {
				case err := <-done:
					if err == nil || !strings.Contains(err.Error(), tc.want) {
						t.Fatalf("serve: %v, want it to say %q", err, tc.want)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("served on a path that is not a socket")
				}
				after, err := os.Lstat(path)
				if err != nil || after.Mode() != before.Mode() || after.Size() != before.Size() {
					t.Fatalf("%s changed: %v, %v", path, after, err)
				}
				if data, err := os.ReadFile(target); err != nil || string(data) != "keep me" {
					t.Fatalf("the symlink's target changed: %q %v", data, err)
				}
				return
			}
			waitListening(t, "unix", path, done)
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("serve: %v", err)
			}
		})
	}
}

// TestAllowedPathsResolved: the allowed directories and the caller's path
// are both compared with their symlinks resolved, and ".." is applied the
// way the kernel does (after the symlink before it), so neither a link nor
// a ".." leads outside.
func TestAllowedPathsResolved(t *testing.T) {
	root := t.TempDir()
	real := filepath.Join(root, "real")
	outside := filepath.Join(root, "outside")
	for _, d := range []string{real, outside, filepath.Join(outside, "deep")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(real, "in.raw"), filepath.Join(real, "x.raw"), filepath.Join(outside, "x.raw"), filepath.Join(outside, "secret")} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	viaLink := filepath.Join(root, "via-link") // the operator names the allowed dir through a link
	if err := os.Symlink(real, viaLink); err != nil {
		t.Fatal(err)
	}
	// real/out -> outside/deep: "real/out/../x.raw" is outside/x.raw to
	// the kernel, though lexically it reads real/x.raw.
	if err := os.Symlink(filepath.Join(outside, "deep"), filepath.Join(real, "out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(real, "secret.raw")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("in.raw", filepath.Join(real, "rel.raw")); err != nil {
		t.Fatal(err)
	}
	pp, err := newPathPolicy("", []string{viaLink})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path   string
		status int    // 0: allowed
		want   string // the resolved path when allowed
	}{
		{filepath.Join(real, "in.raw"), 0, filepath.Join(real, "in.raw")},
		{filepath.Join(viaLink, "in.raw"), 0, filepath.Join(real, "in.raw")},
		{filepath.Join(real, "rel.raw"), 0, filepath.Join(real, "in.raw")},
		{filepath.Join(real, "sub", "..", "in.raw"), 0, filepath.Join(real, "in.raw")},
		{filepath.Join(real, "out") + "/../x.raw", 403, ""},
		{filepath.Join(viaLink, "out") + "/../secret", 403, ""},
		{filepath.Join(real, "secret.raw"), 403, ""},
		{filepath.Join(real, "..", "outside", "secret"), 403, ""},
		{real + "/../outside/x.raw", 403, ""},
		{filepath.Join(real, "out") + "/../../real/in.raw", 0, filepath.Join(real, "in.raw")}, // kernel: outside/deep, outside, root, real/in.raw
		{filepath.Join(real, "out") + "/../../../real/in.raw", 403, ""},                       // reads as outside the allowed dir: not looked at
		{viaLink, 403, ""},
		{filepath.Join(outside, "x.raw"), 403, ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			got, err := pp.check(context.Background(), "location", tc.path, true)
			if tc.status == 0 {
				if err != nil || got != tc.want {
					t.Fatalf("check = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			he, ok := err.(*httpError)
			if !ok || he.status != tc.status {
				t.Fatalf("check = %q, %v; want status %d", got, err, tc.status)
			}
		})
	}
	// This host's user (root on the Unix socket: LocalHandler) names any
	// file, as without a server; a missing one is still an error.
	local := context.WithValue(context.Background(), localCallerKey{}, true)
	if got, err := pp.check(local, "location", filepath.Join(outside, "x.raw"), false); err != nil || got != filepath.Join(outside, "x.raw") {
		t.Errorf("a local caller's file outside --allow-path: %q, %v", got, err)
	}
	if _, err := pp.check(local, "location", filepath.Join(outside, "missing.raw"), false); err == nil {
		t.Error("a local caller's missing file: no error")
	}
}

// slowSetups is a Server whose SetupModel records its options and runs
// until its context ends, or fails at once with fail when that is set.
type slowSetups struct {
	vmfest.Server
	fail error
	mu   sync.Mutex
	got  []vmfest.SetupOptions
}

func (s *slowSetups) SetupModel(ctx context.Context, source string, opts vmfest.SetupOptions) (model.ImageModel, error) {
	s.mu.Lock()
	s.got = append(s.got, opts)
	s.mu.Unlock()
	if s.fail != nil {
		return model.ImageModel{}, s.fail
	}
	<-ctx.Done()
	return model.ImageModel{}, ctx.Err()
}

// TestSetupsCapped: at most MaxSetups setup-model operations run at once;
// the next is refused with 503 and Retry-After, and accepted again once
// one has ended. Other operations are not counted against the cap.
func TestSetupsCapped(t *testing.T) {
	e := newEnv(t)
	s, err := New(context.Background(), &slowSetups{Server: e.local}, Config{Home: e.home, Logger: quiet(), MaxSetups: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := s.Handler()
	send := func(method, path, body string) *http.Response {
		req, _ := http.NewRequest(method, path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Result()
	}
	setup := `{"source":"https://images.invalid/x.img"}`
	var ids []string
	for i := range 2 {
		resp := send("POST", "/v1/models", setup)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("setup %d: %d", i, resp.StatusCode)
		}
		var op wire.Operation
		json.NewDecoder(resp.Body).Decode(&op)
		ids = append(ids, op.ID)
	}
	resp := send("POST", "/v1/models", setup)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("setup 3: %d, want 503", resp.StatusCode)
	}
	if ra := resp.Header.Get("Retry-After"); ra == "" {
		t.Error("no Retry-After on the refused setup")
	}
	var we wire.Error
	if err := json.NewDecoder(resp.Body).Decode(&we); err != nil || we.Code != wire.CodeUnavailable || !strings.Contains(we.Error, "2 setup-model") {
		t.Fatalf("refusal body %+v, %v", we, err)
	}
	// Another kind of operation still runs.
	if _, err := s.ops.start(s.ctx, wire.OpWaitReady, "m", time.Second, func(context.Context, func(wire.Progress)) (any, error) { return nil, nil }); err != nil {
		t.Fatalf("wait-ready while setups are capped: %v", err)
	}
	if resp := send("DELETE", "/v1/operations/"+ids[0], ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("cancel: %d", resp.StatusCode)
	}
	if resp := send("POST", "/v1/models", setup); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("setup after one ended: %d", resp.StatusCode)
	}
	if _, err := New(context.Background(), e.local, Config{Home: e.home, Logger: quiet(), MaxSetups: -1}); err == nil {
		t.Error("MaxSetups -1 accepted")
	}
}

// TestTokenFileNotRegular: a FIFO or a directory at the token path is
// refused at once (opening the FIFO does not block the server).
func TestTokenFileNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := LoadToken(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("LoadToken(fifo): %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("LoadToken blocked on a FIFO")
	}
	if _, err := LoadToken(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("LoadToken(dir): %v", err)
	}
}

// callerRecorder is a Server whose HardwareModels records whether each
// request came through LocalHandler.
type callerRecorder struct {
	vmfest.Server
	mu    sync.Mutex
	local []bool
}

func (c *callerRecorder) HardwareModels(ctx context.Context) ([]string, error) {
	v, _ := ctx.Value(localCallerKey{}).(bool)
	c.mu.Lock()
	c.local = append(c.local, v)
	c.mu.Unlock()
	return nil, nil
}

// TestCallerOrigin: requests on Serve's Unix socket are this host's
// user's; requests on TCP (with the token) and through Handler are remote
// callers'; a request body cannot claim either (nor set a fetch policy).
func TestCallerOrigin(t *testing.T) {
	e := newEnv(t)
	rec := &callerRecorder{Server: e.local}
	s, err := New(context.Background(), rec, Config{Home: e.home, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	sock := filepath.Join(t.TempDir(), "api.sock")
	addr := freePort(t)
	done := make(chan error, 1)
	go func() {
		done <- s.Serve(ctx, Listen{Unix: sock, TCP: addr, TokenFile: filepath.Join(e.home, TokenFile)})
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitListening(t, "tcp", addr, done)
	unixR, err := vmfest.Connect("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	tcpR, err := vmfest.Connect("http://"+addr, vmfest.WithToken(e.token))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unixR.HardwareModels(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tcpR.HardwareModels(ctx); err != nil {
		t.Fatal(err)
	}
	h := httptest.NewRecorder()
	s.Handler().ServeHTTP(h, httptest.NewRequest("GET", "/v1/hardware", nil))
	rec.mu.Lock()
	got := append([]bool(nil), rec.local...)
	rec.mu.Unlock()
	if len(got) != 3 || !got[0] || got[1] || got[2] {
		t.Fatalf("local caller seen as %v, want [unix:true tcp:false handler:false]", got)
	}
	for _, body := range []string{
		`{"source":"https://images.invalid/x.img","FetchPolicy":{"Restricted":false}}`,
		`{"source":"https://images.invalid/x.img","fetch-policy":{"restricted":false}}`,
		`{"source":"https://images.invalid/x.img","local":true}`,
	} {
		status, resp := e.do(t, "POST", "/v1/models", body)
		if status != http.StatusBadRequest || !strings.Contains(decodeError(t, resp).Error, "unknown field") {
			t.Errorf("%s: %d %s, want 400 unknown field", body, status, resp)
		}
	}
}

// TestFetchPolicyByCaller: a token holder's setup-model runs under the
// restricted fetch policy with the operator's allow list; this host's user
// (the Unix socket) is not restricted.
func TestFetchPolicyByCaller(t *testing.T) {
	e := newEnv(t)
	rec := &slowSetups{Server: e.local, fail: errors.New("recorded")}
	mirror := netip.MustParsePrefix("10.1.0.0/16")
	s, err := New(context.Background(), rec, Config{Home: e.home, Logger: quiet(), FetchAllow: []netip.Prefix{mirror}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, h := range []http.Handler{s.LocalHandler(), s.Handler(), RequireToken(s.Handler(), filepath.Join(e.home, TokenFile))} {
		req := httptest.NewRequest("POST", "/v1/models", strings.NewReader(`{"source":"https://images.invalid/x.img"}`))
		req.Header.Set("Authorization", "Bearer "+e.token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			t.Fatalf("setup-model: %d %s", w.Code, w.Body)
		}
		var op wire.Operation
		json.Unmarshal(w.Body.Bytes(), &op)
		o, ok := s.ops.get(op.ID)
		if !ok {
			t.Fatalf("operation %q not found", op.ID)
		}
		select {
		case <-o.done:
		case <-time.After(30 * time.Second):
			t.Fatal("the setup did not end")
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.got) != 3 {
		t.Fatalf("%d setups recorded", len(rec.got))
	}
	if p := rec.got[0].FetchPolicy; p.Restricted || len(p.Allow) != 0 {
		t.Errorf("Unix socket caller: policy %+v, want unrestricted", p)
	}
	for i, opts := range rec.got[1:] {
		if p := opts.FetchPolicy; !p.Restricted || len(p.Allow) != 1 || p.Allow[0] != mirror {
			t.Errorf("remote caller %d: policy %+v, want restricted allowing %s", i, p, mirror)
		}
	}
}

// TestFetchPolicyThroughAPI: through the real Local server, a token
// holder's setup-model from a loopback web server is refused (code
// invalid, nothing installed) unless the operator's FetchAllow holds it;
// this host's user on the Unix socket fetches it.
func TestFetchPolicyThroughAPI(t *testing.T) {
	disk := make([]byte, 1<<20)
	copy(disk[4096:], "vmfest")
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/disk.raw" {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "disk.raw", time.Time{}, strings.NewReader(string(disk)))
	}))
	defer web.Close()
	setup := func(t *testing.T, h http.Handler, token, id string) wire.Operation {
		t.Helper()
		req := httptest.NewRequest("POST", "/v1/models", strings.NewReader(`{"source":"`+web.URL+`/disk.raw","id":"`+id+`"}`))
		req.Header.Set("Authorization", "Bearer "+token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusAccepted {
			t.Fatalf("setup-model: %d %s", w.Code, w.Body)
		}
		var op wire.Operation
		json.Unmarshal(w.Body.Bytes(), &op)
		for !op.Done() {
			w := httptest.NewRecorder()
			req := httptest.NewRequest("GET", "/v1/operations/"+op.ID+"/wait?timeout=30s", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			h.ServeHTTP(w, req)
			if err := json.Unmarshal(w.Body.Bytes(), &op); err != nil || op.ID == "" {
				t.Fatalf("wait: %d %s", w.Code, w.Body)
			}
		}
		return op
	}
	t.Run("token holder refused", func(t *testing.T) {
		e := newEnv(t)
		op := setup(t, RequireToken(e.api.Handler(), filepath.Join(e.home, TokenFile)), e.token, "web")
		if op.Status != wire.Failed || op.Error == nil || op.Error.Code != wire.CodeInvalid {
			t.Fatalf("operation %+v %+v, want failed with code invalid", op, op.Error)
		}
		if _, err := e.local.Model(context.Background(), "web"); err == nil {
			t.Fatal("the model was installed")
		}
	})
	t.Run("token holder, loopback allowed", func(t *testing.T) {
		e := newEnv(t, func(_ *vmfest.Config, c *Config) { c.FetchAllow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} })
		if op := setup(t, RequireToken(e.api.Handler(), filepath.Join(e.home, TokenFile)), e.token, "web"); op.Status != wire.Succeeded {
			t.Fatalf("operation %+v %+v, want succeeded", op, op.Error)
		}
	})
	t.Run("unix socket caller", func(t *testing.T) {
		e := newEnv(t)
		if op := setup(t, e.api.LocalHandler(), "", "web"); op.Status != wire.Succeeded {
			t.Fatalf("operation %+v %+v, want succeeded", op, op.Error)
		}
	})
}
