package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

func decodeError(t *testing.T, body []byte) wire.Error {
	t.Helper()
	var we wire.Error
	if err := json.Unmarshal(body, &we); err != nil || we.Code == "" || we.Error == "" {
		t.Fatalf("not a JSON error body: %q (%v)", body, err)
	}
	return we
}

// TestAuth: without the right bearer token nothing is done and the answer
// is 401; /healthz needs none; a rotated token replaces the old one.
func TestAuth(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, auth string
	}{
		{"no header", ""},
		{"wrong token", "Bearer " + strings.Repeat("0", 64)},
		{"token prefix", "Bearer " + e.token[:10]},
		{"basic scheme", "Basic " + e.token},
		{"bare token", e.token},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := e.doAuth(t, "POST", "/v1/machines", createBody("auth1", e.blank), tc.auth)
			if status != http.StatusUnauthorized || decodeError(t, body).Code != wire.CodeUnauthorized {
				t.Fatalf("create: %d %s, want 401", status, body)
			}
			if e.machineExists(t, "auth1") {
				t.Fatal("the machine was created without a valid token")
			}
			for _, path := range []string{"/v1/machines", "/metrics", "/v1/events", "/v1/openapi.json"} {
				if status, _ := e.doAuth(t, "GET", path, nil, tc.auth); status != http.StatusUnauthorized {
					t.Errorf("GET %s: %d, want 401", path, status)
				}
			}
		})
	}
	if status, _ := e.doAuth(t, "GET", "/healthz", nil, ""); status != http.StatusOK {
		t.Errorf("healthz without a token: %d", status)
	}
	if status, body := e.do(t, "GET", "/v1/machines", nil); status != http.StatusOK {
		t.Fatalf("with the token: %d %s", status, body)
	}

	old := e.token
	tok, err := RotateToken(filepath.Join(e.home, TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if status, _ := e.doAuth(t, "GET", "/v1/machines", nil, "Bearer "+old); status != http.StatusUnauthorized {
		t.Errorf("old token after rotation: %d, want 401", status)
	}
	if status, _ := e.doAuth(t, "GET", "/v1/machines", nil, "Bearer "+tok); status != http.StatusOK {
		t.Errorf("new token after rotation: %d, want 200", status)
	}
	st, err := os.Stat(filepath.Join(e.home, TokenFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("token file mode: %v, %v", st.Mode(), err)
	}
}

// TestTokenFileTooOpen: a token others can read is refused.
func TestTokenFileTooOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), TokenFile)
	if err := os.WriteFile(path, []byte(strings.Repeat("a", 64)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadToken(path); err == nil {
		t.Fatal("a world-readable token was accepted")
	}
}

// TestForbiddenPaths: a remote caller names disk paths only inside the
// allowed directories (403 otherwise, and nothing is created); an image
// model's disk only as an immutable image.
func TestForbiddenPaths(t *testing.T) {
	e := newEnv(t)
	outside := testutil.BlankImage(t, t.TempDir(), "outside.raw")
	link := filepath.Join(e.allowed, "link.raw")
	if err := os.Symlink(outside.Location, link); err != nil {
		t.Fatal(err)
	}
	modelDisk := filepath.Join(e.home, "models", "images", "m1", "disk.qcow2")
	os.MkdirAll(filepath.Dir(modelDisk), 0o755)
	if err := os.WriteFile(modelDisk, make([]byte, 1<<16), 0o444); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		image  spec.Image
		status int
	}{
		{"outside", outside, 403},
		{"dot-dot out of the allowed dir", spec.Image{Location: e.allowed + "/../../etc/passwd", Immutable: true}, 403},
		{"symlink pointing outside", spec.Image{Location: link, Immutable: true}, 403},
		{"the allowed dir itself", spec.Image{Location: e.allowed, Immutable: true}, 403},
		{"a model disk as mutable", spec.Image{Location: modelDisk}, 403},
		{"relative", spec.Image{Location: "blank.raw", Immutable: true}, 400},
		{"missing inside", spec.Image{Location: filepath.Join(e.allowed, "nope.raw"), Immutable: true}, 400},
		{"NUL", spec.Image{Location: e.blank.Location + "\x00x", Immutable: true}, 400},
		{"allowed", e.blank, 201},
		{"a model disk as immutable", spec.Image{Location: modelDisk, Immutable: true}, 201},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("p%d", len(tc.name))
			status, body := e.do(t, "POST", "/v1/machines", createBody(name, tc.image))
			if status != tc.status {
				t.Fatalf("create: %d %s, want %d", status, body, tc.status)
			}
			if status >= 400 {
				decodeError(t, body)
				if e.machineExists(t, name) {
					t.Fatal("a machine was created")
				}
				return
			}
			if status, body := e.do(t, "DELETE", "/v1/machines/"+name, nil); status != 204 {
				t.Fatalf("destroy: %d %s", status, body)
			}
		})
	}
	if _, err := os.Stat(modelDisk); err != nil {
		t.Fatalf("the model disk is gone: %v", err)
	}
	for _, tc := range []struct {
		source string
		status int
	}{
		{"/etc/passwd", 403},
		{"file:///etc/passwd", 403},
		{"file://host/etc/passwd", 400},
		{"ftp://example.com/x.img", 400},
		{"relative.img", 400},
		{"http:///nohost", 400},
	} {
		t.Run("setup-model "+tc.source, func(t *testing.T) {
			status, body := e.do(t, "POST", "/v1/models", wire.SetupModel{Source: tc.source})
			if status != tc.status {
				t.Fatalf("%d %s, want %d", status, body, tc.status)
			}
		})
	}
	status, body := e.do(t, "POST", "/v1/models", wire.SetupModel{Source: e.blank.Location, Meta: &spec.Image{Location: "/etc/shadow"}})
	if status != 403 {
		t.Errorf("setup-model with a meta location outside: %d %s", status, body)
	}
}

// TestBodies: oversized, malformed and odd bodies are refused with a JSON
// error and do nothing.
func TestBodies(t *testing.T) {
	e := newEnv(t)
	valid, _ := json.Marshal(createBody("b1", e.blank))
	huge := `{"name":"b1","image":{"spec":{"location":"` + strings.Repeat("a", 2<<20) + `"}}}`
	for _, tc := range []struct {
		name   string
		body   string
		status int
	}{
		{"oversized", huge, 413},
		{"empty", "", 400},
		{"not JSON", "name=b1", 400},
		{"truncated", string(valid[:len(valid)-3]), 400},
		{"unknown field", `{"name":"b1","image":{"model":"x"},"colour":"red"}`, 400},
		{"unknown spec key", `{"name":"b1","image":{"spec":{"location":"/x","flavour":1}}}`, 400},
		{"two values", string(valid) + string(valid), 400},
		{"array", `[1,2]`, 400},
		{"null name", `{"name":null,"image":{"model":"x"}}`, 400},
		{"wrong types", `{"name":3,"image":"x"}`, 400},
		{"model and spec", `{"name":"b1","image":{"model":"x","spec":{"location":"/x"}}}`, 400},
		{"no image", `{"name":"b1"}`, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := e.do(t, "POST", "/v1/machines", tc.body)
			if status != tc.status {
				t.Fatalf("%d %s, want %d", status, body, tc.status)
			}
			decodeError(t, body)
			if e.machineExists(t, "b1") {
				t.Fatal("a machine was created")
			}
		})
	}
	req, _ := http.NewRequest("POST", e.http.URL+"/v1/machines", strings.NewReader(string(valid)))
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set("Content-Type", "text/plain")
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain body: %d, want 415", resp.StatusCode)
	}
}

// TestNames: names that are not one safe path element never reach the
// Local server, in the path or in a body.
func TestNames(t *testing.T) {
	e := newEnv(t)
	// A machine that a path trick might reach: it must survive.
	if status, body := e.do(t, "POST", "/v1/machines", createBody("keep", e.blank)); status != 201 {
		t.Fatalf("create keep: %d %s", status, body)
	}
	for _, p := range []string{
		"/v1/machines/a%2Fb", "/v1/machines/..%2Fkeep", "/v1/machines/%2E%2E", "/v1/machines/x%00y",
		"/v1/machines/.hidden", "/v1/machines/" + strings.Repeat("n", 64), "/v1/machines/-x",
		"/v1/hardware/..%2F..%2Fevil", "/v1/models/a%2F..%2F..", "/v1/networks/%00",
	} {
		for _, method := range []string{"GET", "DELETE"} {
			status, body := e.do(t, method, p, nil)
			if status < 400 && status != 301 && status != 307 && status != 308 {
				t.Errorf("%s %s: %d %s", method, p, status, body)
			}
		}
	}
	for _, n := range []string{"a/b", "../keep", "..", "x\x00y", "", ".x", "keep/../keep"} {
		status, body := e.do(t, "POST", "/v1/machines", createBody(n, e.blank))
		if status != 400 {
			t.Errorf("create %q: %d %s, want 400", n, status, body)
		}
		status, body = e.do(t, "PUT", "/v1/hardware/"+url.PathEscape(n), natOnly)
		if status < 400 {
			t.Errorf("hardware %q: %d %s", n, status, body)
		}
	}
	if !e.machineExists(t, "keep") {
		t.Fatal("machine keep is gone")
	}
	entries, _ := os.ReadDir(filepath.Join(e.home, "machines"))
	if len(entries) != 1 {
		t.Fatalf("machines directory: %v", entries)
	}
}

// TestStatuses maps the vmfest errors to HTTP statuses and codes.
func TestStatuses(t *testing.T) {
	e := newEnv(t)
	if status, body := e.do(t, "POST", "/v1/machines", createBody("s1", e.blank)); status != 201 {
		t.Fatalf("create: %d %s", status, body)
	}
	bad := createBody("s2", e.blank)
	bad["hardware"] = map[string]any{"spec": map[string]any{"memory-size": -1}}
	for _, tc := range []struct {
		method, path string
		body         any
		status       int
		code         string
	}{
		{"GET", "/v1/machines/nope", nil, 404, wire.CodeNotFound},
		{"POST", "/v1/machines/nope/start", nil, 404, wire.CodeNotFound},
		{"POST", "/v1/machines", createBody("s1", e.blank), 409, wire.CodeExists},
		{"POST", "/v1/machines/s1/pause", nil, 409, wire.CodeWrongState},
		{"POST", "/v1/machines/s1/wait-ready", nil, 409, wire.CodeWrongState},
		{"POST", "/v1/machines/s1/explode", nil, 404, wire.CodeNotFound},
		{"POST", "/v1/machines", bad, 400, wire.CodeInvalid},
		{"POST", "/v1/machines", map[string]any{"name": "s3", "image": map[string]any{"model": "nope"}}, 404, wire.CodeNotFound},
		{"GET", "/v1/hardware/nope", nil, 404, wire.CodeNotFound},
		{"GET", "/v1/operations/nope", nil, 404, wire.CodeNotFound},
		{"GET", "/v1/machines/s1/ip?slot=x", nil, 400, wire.CodeInvalid},
		{"POST", "/v1/machines/s1/stop?timeout=soon", nil, 400, wire.CodeInvalid},
		{"GET", "/v2/machines", nil, 404, wire.CodeNotFound},
		{"POST", "/v1/machines", map[string]any{"name": "s4", "image": map[string]any{"spec": e.blank}}, 400, wire.CodeInvalid},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			status, body := e.do(t, tc.method, tc.path, tc.body)
			if status != tc.status {
				t.Fatalf("%d %s, want %d", status, body, tc.status)
			}
			if we := decodeError(t, body); we.Code != tc.code {
				t.Fatalf("code %q, want %q", we.Code, tc.code)
			}
		})
	}
	// A wrong-state error carries what a client needs to rebuild it.
	_, body := e.do(t, "POST", "/v1/machines/s1/resume", nil)
	if we := decodeError(t, body); we.Machine != "s1" || we.State != "powered-off" || we.Op != "resume" || len(we.Needs) != 1 {
		t.Errorf("wrong-state body: %+v", we)
	}
}

// TestOpenAPI: the document is JSON, OpenAPI 3, and describes every route.
func TestOpenAPI(t *testing.T) {
	e := newEnv(t)
	status, body := e.do(t, "GET", "/v1/openapi.json", nil)
	if status != 200 {
		t.Fatalf("%d", status)
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q", doc.OpenAPI)
	}
	documented := map[string]bool{}
	for p, ops := range doc.Paths {
		for m := range ops {
			documented[strings.ToUpper(m)+" "+p] = true
		}
	}
	served := map[string]bool{}
	for _, rt := range routeTable {
		k := rt.method + " " + rt.path
		served[k] = true
		if !documented[k] {
			t.Errorf("%s is served but not in api/openapi.json", k)
		}
	}
	for k := range documented {
		if !strings.HasPrefix(k, "PARAMETERS ") && !served[k] {
			t.Errorf("%s is in api/openapi.json but not served", k)
		}
	}
}

// TestEventsAndMetrics: a create shows on the event stream and in the
// metrics.
func TestEventsAndMetrics(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.http.URL+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Scan() // the opening comment: the subscription is in place
	if status, body := e.do(t, "POST", "/v1/machines", createBody("ev1", e.blank)); status != 201 {
		t.Fatalf("create: %d %s", status, body)
	}
	var got wire.Event
	for sc.Scan() {
		line := sc.Text()
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			if err := json.Unmarshal([]byte(data), &got); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if got.Type != wire.EventMachine || got.Machine != "ev1" || got.Action != "created" {
		t.Fatalf("event %+v", got)
	}

	for i := range 3 { // methods a caller makes up share one label value
		e.do(t, fmt.Sprintf("MADEUP%d", i), "/v1/machines", nil)
	}
	status, body := e.do(t, "GET", "/metrics", nil)
	if status != 200 {
		t.Fatalf("metrics: %d", status)
	}
	text := string(body)
	for _, want := range []string{
		`vmfest_machines{state="powered-off"} 1`,
		`vmfest_http_requests_total{method="POST",route="machines",code="201"} 1`,
		`# TYPE vmfest_http_request_duration_seconds histogram`,
		`vmfest_http_request_duration_seconds_count{route="machines"} 1`,
		`vmfest_http_requests_total{method="other",route="other",code="404"} 3`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
	// Every sample line is NAME{labels} VALUE or NAME VALUE.
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		if strings.HasPrefix(line, "# ") {
			continue
		}
		if f := strings.Fields(line); len(f) != 2 || !strings.HasPrefix(f[0], "vmfest_") {
			t.Errorf("bad sample line %q", line)
		}
	}
}

func TestTCPAddress(t *testing.T) {
	for _, tc := range []struct {
		addr          string
		tls, insecure bool
		want          string // "" for refused
	}{
		{"127.0.0.1:9000", false, false, "127.0.0.1:9000"},
		{"localhost", false, false, "localhost:18083"},
		{"[::1]:5", false, false, "[::1]:5"},
		{"127.0.0.1", false, false, "127.0.0.1:18083"},
		{":18083", false, false, ""},
		{"0.0.0.0:1", false, false, ""},
		{"192.0.2.7:1", false, false, ""},
		{"example.com:1", false, false, ""},
		{"0.0.0.0:1", true, false, "0.0.0.0:1"},
		{"192.0.2.7:1", false, true, "192.0.2.7:1"},
	} {
		got, err := TCPAddress(tc.addr, tc.tls, tc.insecure)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%q tls=%v insecure=%v: accepted as %q, want refused", tc.addr, tc.tls, tc.insecure, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.addr, got, err, tc.want)
		}
	}
}

// serveUnix serves e's API on a Unix socket and returns a Remote on it.
func serveUnix(t testing.TB, e *env) (*vmfest.Remote, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sock := filepath.Join(e.home, SocketFile)
	done := make(chan error, 1)
	go func() { done <- e.api.Serve(ctx, Listen{Unix: sock}) }()
	t.Cleanup(func() { cancel(); <-done })
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	r, err := vmfest.Connect("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	return r, sock
}

// TestUnixSocket: mode 0600, no token needed, a second server on the same
// socket is refused.
func TestUnixSocket(t *testing.T) {
	e := newEnv(t)
	r, sock := serveUnix(t, e)
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v", st.Mode(), err)
	}
	if _, err := r.Machines(context.Background()); err != nil {
		t.Fatal(err)
	}
	s2, err := New(context.Background(), e.local, Config{Home: e.home, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s2.Serve(ctx, Listen{Unix: sock}); err == nil || !strings.Contains(err.Error(), "another vmfest server") {
		t.Fatalf("second server: %v", err)
	}
}

// TestConcurrentRequests sends 200 requests at once through a Remote on a
// Unix socket: creates and destroys of machines on a blank image, and
// reads. Run with -race.
func TestConcurrentRequests(t *testing.T) {
	e := newEnv(t)
	r, _ := serveUnix(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stable, err := r.Instance(ctx, "stable", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			var err error
			switch i % 4 {
			case 0: // create then destroy a machine of its own
				name := fmt.Sprintf("c%03d", i)
				var m vmfest.Machine
				if m, err = r.Instance(ctx, name, vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly)); err == nil {
					err = m.Destroy(ctx)
				}
			case 1: // two creates of one name: exactly one wins
				name := fmt.Sprintf("d%03d", i/8)
				var m vmfest.Machine
				m, err = r.Instance(ctx, name, vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
				if errors.Is(err, vmfest.ErrExists) {
					err = nil
				} else if err == nil {
					err = m.Destroy(ctx)
					if errors.Is(err, vmfest.ErrNotFound) {
						err = fmt.Errorf("destroyed by someone else: %w", err)
					}
				}
			case 2:
				_, err = r.Machines(ctx)
			case 3:
				var info vmfest.Info
				if info, err = stable.Info(ctx); err == nil && info.State != vmfest.PoweredOff {
					err = fmt.Errorf("stable is %s", info.State)
				}
				if err == nil {
					_, err = r.HardwareModels(ctx)
				}
			}
			errs[i] = err
		}()
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// Every create that won was destroyed; nothing is half made.
	entries, _ := os.ReadDir(filepath.Join(e.home, "machines"))
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), ".") {
			t.Errorf("leftover %s", en.Name())
		}
	}
	ms, err := r.Machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Name() != "stable" {
			t.Errorf("leftover machine %s", m.Name())
		}
	}
}

// TestListKeepsBrokenMachines: a machine whose info cannot be read is
// listed with its name, state unknown and the error, beside the others.
func TestListKeepsBrokenMachines(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"ok1", "broken"} {
		if status, body := e.do(t, "POST", "/v1/machines", createBody(n, e.blank)); status != 201 {
			t.Fatalf("create %s: %d %s", n, status, body)
		}
	}
	if err := os.WriteFile(filepath.Join(e.home, "machines", "broken", "machine.json"), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	status, body := e.do(t, "GET", "/v1/machines", nil)
	if status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	var items []struct {
		Name  string `json:"name"`
		State string `json:"state"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &items); err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 || items[0].Name != "broken" || items[0].State != "unknown" || items[0].Error == "" ||
		items[1].Name != "ok1" || items[1].State != "powered-off" || items[1].Error != "" {
		t.Fatalf("items %+v", items)
	}
}
