package api

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/store"
)

// FuzzDecodeCreate feeds arbitrary bytes to the request decoder: it never
// panics, and what it accepts has only valid names once the handler has
// checked them.
func FuzzDecodeCreate(f *testing.F) {
	for _, seed := range []string{
		`{"name":"vm1","image":{"model":"debian"},"hardware":{"model":"micro"}}`,
		`{"name":"vm1","image":{"spec":{"location":"/x.qcow2","immutable":true}},"hardware":{"spec":{"memory-size":256,"network":[{"attachment-type":"nat"}]}}}`,
		`{"name":"../x","image":{"spec":{"uuid":"/x"}}}`,
		`{"name":"a","image":{"spec":{"location":"/a","uuid":"/b"}}}`,
		`{"name":"a","hardware":{"spec":{"storage":[{"name":"c","bus":"ide","devices":[null,{"device-type":"dvd"}]}],"boot-mount-point":["c",0]}}}`,
		`{"name":"a"}{}`, `[]`, `null`, `{"name":"\u0000"}`, "\xff\xfe", `{"name":1e999}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req wire.CreateMachine
		if err := decodeBody(bytes.NewReader(body), &req); err != nil {
			if _, ok := err.(*httpError); !ok {
				t.Fatalf("decode error is not a 400: %T %v", err, err)
			}
			return
		}
		if validName(req.Name, "machine") == nil && store.ValidateName("machine", req.Name) != nil {
			t.Fatalf("name %q passed the handler's check", req.Name)
		}
	})
}

// FuzzHandler sends arbitrary methods, paths and bodies through the whole
// handler (over a Local server on an empty state directory): no input makes
// it panic, and every error is a JSON body.
func FuzzHandler(f *testing.F) {
	for _, seed := range []struct{ method, path, body string }{
		{"GET", "/v1/machines", ""},
		{"POST", "/v1/machines", `{"name":"f1","image":{"model":"m"}}`},
		{"POST", "/v1/machines", `{"name":"f1","image":{"spec":{"location":"/etc/passwd"}}}`},
		{"DELETE", "/v1/machines/f1", ""},
		{"POST", "/v1/machines/f1/stop?timeout=1ns", ""},
		{"GET", "/v1/machines/f1/ip?slot=-1&wait=x", ""},
		{"PUT", "/v1/hardware/h", `{"memory-size":64}`},
		{"GET", "/v1/operations/000000000000000000000000/wait?timeout=1ms", ""},
		{"GET", "/v1/machines/%2e%2e/state", ""},
	} {
		f.Add(seed.method, seed.path, []byte(seed.body))
	}
	e := newEnv(f)
	// Waits are capped short, so a fuzzed ?wait=1h does not stall a worker.
	s, err := New(context.Background(), e.local, Config{Home: e.home, AllowPaths: []string{e.allowed}, Logger: quiet(), MaxWait: 50 * time.Millisecond})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	h := s.Handler()
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequest(method, "http://vmfest"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a client could send
		}
		switch {
		case req.URL.Path == "/v1/events":
			return // a stream: it does not end
		case req.Method != "GET" && (strings.HasPrefix(req.URL.Path, "/v1/models") || strings.HasPrefix(req.URL.Path, "/v1/networks")):
			return // would fetch URLs or make host networks: not in a fuzz run
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == http.StatusInternalServerError {
			t.Fatalf("%s %s %q: 500 %s", method, path, body, rec.Body)
		}
		if rec.Code >= 400 && !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
			t.Fatalf("%s %s: %d with content type %q", method, path, rec.Code, rec.Header().Get("Content-Type"))
		}
	})
}
