package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/image"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
)

// failing is a Server whose Instance and SetupModel fail with err, and
// whose machine "m" fails to start with err.
type failing struct {
	vmfest.Server
	err error
}

func (f failing) Instance(context.Context, string, vmfest.Image, vmfest.Hardware, ...vmfest.InstanceOption) (vmfest.Machine, error) {
	return nil, f.err
}

func (f failing) SetupModel(context.Context, string, vmfest.SetupOptions) (model.ImageModel, error) {
	return model.ImageModel{}, f.err
}

func (f failing) FindMachine(ctx context.Context, name string) (vmfest.Machine, error) {
	return failingMachine{name: name, err: f.err}, nil
}

type failingMachine struct {
	vmfest.Machine
	name string
	err  error
}

func (m failingMachine) Name() string                                { return m.name }
func (m failingMachine) Start(context.Context) error                 { return m.err }
func (m failingMachine) State(context.Context) (vmfest.State, error) { return vmfest.PoweredOff, nil }

// TestErrorStatuses: bad input (a spec, an image that is not a disk, a
// corrupt or mismatched download, bad metadata, an unfetchable source)
// answers 400 or 422 with code invalid, and a host short of resources 503
// with code unavailable, whether it comes from a request or from an
// operation; only what is left is internal (500).
func TestErrorStatuses(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"spec", fmt.Errorf("hardware spec: %w", vmfest.ErrInvalid), 400, wire.CodeInvalid},
		{"not a disk image", fmt.Errorf("setup-model x: %w: text", image.ErrNotDiskImage), 422, wire.CodeInvalid},
		{"corrupt", fmt.Errorf("setup-model x: %w: the gzip stream ends early", image.ErrCorrupt), 422, wire.CodeInvalid},
		{"checksum", fmt.Errorf("setup-model x: %w", image.ErrChecksum), 422, wire.CodeInvalid},
		{"source", fmt.Errorf("setup-model x: %w: 404", image.ErrSource), 422, wire.CodeInvalid},
		{"meta", fmt.Errorf("setup-model x: %w: yaml: line 1", image.ErrMeta), 422, wire.CodeInvalid},
		{"download too large", fmt.Errorf("setup-model x: %w", image.ErrDownloadTooLarge), 422, wire.CodeInvalid},
		{"not self-contained", fmt.Errorf("image location /x: %w: backing file", image.ErrNotSelfContained), 422, wire.CodeInvalid},
		{"disk too large", fmt.Errorf("setup-model x: %w", image.ErrDiskTooLarge), 422, wire.CodeInvalid},
		{"unavailable", fmt.Errorf("start QEMU: cannot set up guest memory: %w", vmfest.ErrUnavailable), 503, wire.CodeUnavailable},
		{"disk full", fmt.Errorf("install: %w", &fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}), 503, wire.CodeUnavailable},
		{"out of memory", fmt.Errorf("start: %w", syscall.ENOMEM), 503, wire.CodeUnavailable},
		{"other", errors.New("boom"), 500, wire.CodeInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(context.Background(), failing{e.local, tc.err}, Config{Home: e.home, AllowPaths: []string{e.allowed}, Logger: quiet()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			h := s.Handler()
			send := func(method, path string, body any) (int, []byte) {
				data, _ := json.Marshal(body)
				req, _ := http.NewRequest(method, path, strings.NewReader(string(data)))
				req.Header.Set("Content-Type", "application/json")
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				return rec.Code, rec.Body.Bytes()
			}
			// From a request.
			status, body := send("POST", "/v1/machines", createBody("x", e.blank))
			if we := decodeError(t, body); status != tc.status || we.Code != tc.code {
				t.Fatalf("create: %d %+v, want %d %s", status, we, tc.status, tc.code)
			}
			status, body = send("POST", "/v1/machines/m/start", nil)
			if we := decodeError(t, body); status != tc.status || we.Code != tc.code {
				t.Fatalf("start: %d %+v, want %d %s", status, we, tc.status, tc.code)
			}
			// From an operation.
			status, body = send("POST", "/v1/models", wire.SetupModel{Source: "https://images.invalid/x.img"})
			if status != http.StatusAccepted {
				t.Fatalf("setup-model: %d %s", status, body)
			}
			var op wire.Operation
			json.Unmarshal(body, &op)
			_, body = send("GET", "/v1/operations/"+op.ID+"/wait?timeout=30s", nil)
			json.Unmarshal(body, &op)
			if op.Status != wire.Failed || op.Error == nil || op.Error.Code != tc.code {
				t.Fatalf("setup-model operation: %+v, want failed with code %s", op, tc.code)
			}
		})
	}
}

// TestImageErrorsThroughAPI: images a caller sends that vmfest cannot take
// fail the setup-model operation with code invalid, through the real Local
// server: a text file, a truncated download, a wrong sha256, bad metadata.
func TestImageErrorsThroughAPI(t *testing.T) {
	e := newEnv(t)
	put := func(name string, data []byte) string {
		t.Helper()
		p := filepath.Join(e.allowed, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	text := put("notes.img", []byte("just some text\nmore text\n"))
	gz, err := os.ReadFile(filepath.Join("..", "build", "vmfest-tiny.qcow2.gz"))
	if err != nil || len(gz) < 4096 {
		t.Skipf("build/vmfest-tiny.qcow2.gz: %v", err)
	}
	truncated := put("truncated.qcow2.gz", gz[:len(gz)/2])
	good := filepath.Join(e.allowed, "good.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", good, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	badMeta := filepath.Join(e.allowed, "meta.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", badMeta, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	put("meta.meta", []byte("location: [unclosed\nos-family: {\n"))
	for _, tc := range []struct {
		name string
		req  wire.SetupModel
		want string
	}{
		{"text", wire.SetupModel{Source: text, ID: "text"}, "not a disk image"},
		{"truncated", wire.SetupModel{Source: truncated, ID: "truncated"}, "corrupt"},
		{"checksum", wire.SetupModel{Source: good, ID: "sum", SHA256: strings.Repeat("0", 64)}, "checksum"},
		{"meta", wire.SetupModel{Source: badMeta, ID: "meta"}, "metadata"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := e.do(t, "POST", "/v1/models", tc.req)
			if status != http.StatusAccepted {
				t.Fatalf("setup-model: %d %s", status, body)
			}
			var op wire.Operation
			json.Unmarshal(body, &op)
			deadline := time.Now().Add(60 * time.Second)
			for !op.Done() && time.Now().Before(deadline) {
				_, body = e.do(t, "GET", "/v1/operations/"+op.ID+"/wait?timeout=30s", nil)
				json.Unmarshal(body, &op)
			}
			if op.Status != wire.Failed || op.Error == nil || op.Error.Code != wire.CodeInvalid || !strings.Contains(op.Error.Error, tc.want) {
				t.Fatalf("operation %+v, want failed with code invalid saying %q", op.Error, tc.want)
			}
		})
	}
}

// TestMemoryThroughAPI: a memory-size over the host's is bad input (400
// naming memory-size); memory QEMU cannot allocate at start is the host's
// limit (503 unavailable), not an internal error.
func TestMemoryThroughAPI(t *testing.T) {
	e := newEnv(t)
	big := createBody("big", e.blank)
	big["hardware"] = map[string]any{"spec": map[string]any{"memory-size": spec.MaxMemorySize, "cpu-count": 1, "network": []any{map[string]any{"attachment-type": "nat"}}}}
	status, body := e.do(t, "POST", "/v1/machines", big)
	if we := decodeError(t, body); status != http.StatusBadRequest || we.Code != wire.CodeInvalid || !strings.Contains(we.Error, "memory-size") {
		t.Fatalf("create with memory-size %d: %d %+v, want 400 invalid naming memory-size", spec.MaxMemorySize, status, we)
	}
	if status, body := e.do(t, "POST", "/v1/machines", createBody("shrunk", e.blank)); status != http.StatusCreated {
		t.Fatalf("create: %d %s", status, body)
	}
	// The record says more memory than the host has (the host lost memory,
	// or the file was edited).
	path := filepath.Join(e.home, "machines", "shrunk", "machine.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	rec["hardware"].(map[string]any)["memory-size"] = spec.MaxMemorySize
	data, _ = json.Marshal(rec)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	status, body = e.do(t, "POST", "/v1/machines/shrunk/start", nil)
	if we := decodeError(t, body); status != http.StatusServiceUnavailable || we.Code != wire.CodeUnavailable || !strings.Contains(we.Error, "memory-size") {
		t.Fatalf("start: %d %+v, want 503 unavailable naming memory-size", status, we)
	}
}
