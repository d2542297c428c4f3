package api

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/driver/fake"
)

// oneFileTar is a tar of one file named top.
func oneFileTar(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "top", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte("hi"))
	tw.Close()
	return buf.Bytes()
}

// sendTar PUTs body to path with the given content type and returns the
// status and the error body's code.
func (e *env) sendTar(t *testing.T, path, contentType string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, e.http.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var we wire.Error
	json.NewDecoder(resp.Body).Decode(&we)
	return resp.StatusCode, we.Code
}

// TestCopyErrors: the copy endpoints refuse what they cannot do with the
// API's usual errors, over raw HTTP and through the Remote client, on the
// fake driver (no guest: its agent has no guest-exec).
func TestCopyErrors(t *testing.T) {
	fk := fake.New(fake.Options{})
	e, r := fakeRemote(t, fk)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := r.Instance(ctx, "c1", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
	if err != nil {
		t.Fatal(err)
	}
	good := oneFileTar(t)
	for _, c := range []struct {
		name        string
		path        string
		contentType string
		body        []byte
		status      int
		code        string
	}{
		{"no such machine", "/v1/machines/nope/files?path=/tmp", wire.TarType, good, http.StatusNotFound, wire.CodeNotFound},
		{"a bad machine name", "/v1/machines/..bad/files?path=/tmp", wire.TarType, good, http.StatusBadRequest, wire.CodeInvalid},
		{"no path", "/v1/machines/c1/files", wire.TarType, good, http.StatusBadRequest, wire.CodeInvalid},
		{"a relative path", "/v1/machines/c1/files?path=tmp", wire.TarType, good, http.StatusBadRequest, wire.CodeInvalid},
		{"a bad transport", "/v1/machines/c1/files?path=/tmp&via=ftp", wire.TarType, good, http.StatusBadRequest, wire.CodeInvalid},
		{"JSON, not a tar", "/v1/machines/c1/files?path=/tmp", "application/json", []byte("{}"), http.StatusUnsupportedMediaType, wire.CodeInvalid},
		{"not a tar stream", "/v1/machines/c1/files?path=/tmp", wire.TarType, []byte("hello"), http.StatusBadRequest, wire.CodeInvalid},
		{"a powered-off machine", "/v1/machines/c1/files?path=/tmp", wire.TarType, good, http.StatusConflict, wire.CodeWrongState},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, code := e.sendTar(t, c.path, c.contentType, c.body)
			if status != c.status || code != c.code {
				t.Fatalf("PUT %s: %d %s, want %d %s", c.path, status, code, c.status, c.code)
			}
		})
	}
	for _, c := range []struct {
		path   string
		status int
	}{
		{"/v1/machines/nope/files?path=/tmp", http.StatusNotFound},
		{"/v1/machines/c1/files", http.StatusBadRequest},
		{"/v1/machines/c1/files?path=/etc&via=ftp", http.StatusBadRequest},
		{"/v1/machines/c1/files?path=/etc", http.StatusConflict},
	} {
		if status, body := e.do(t, http.MethodGet, c.path, nil); status != c.status {
			t.Errorf("GET %s: %d %s, want %d", c.path, status, body, c.status)
		}
	}

	// Through the Remote client: the same errors as a Local's.
	src := filepath.Join(t.TempDir(), "f")
	os.WriteFile(src, []byte("hi"), 0o644)
	var se *vmfest.StateError
	if err := vmfest.CopyTo(ctx, m, src, "/tmp", vmfest.CopyOptions{Via: vmfest.CopyViaAgent}); !errors.As(err, &se) || se.State != vmfest.PoweredOff {
		t.Fatalf("copy to a powered-off machine: %v, want a *StateError", err)
	}
	if err := vmfest.CopyFrom(ctx, m, "/etc/hostname", t.TempDir(), vmfest.CopyOptions{Via: vmfest.CopyViaAgent}); !errors.As(err, &se) {
		t.Fatalf("copy from a powered-off machine: %v, want a *StateError", err)
	}
	if err := vmfest.CopyTo(ctx, m, src, "/tmp", vmfest.CopyOptions{Via: "ftp"}); !errors.Is(err, vmfest.ErrInvalid) {
		t.Fatalf("copy via ftp: %v, want ErrInvalid", err)
	}
	// A running machine whose guest agent cannot run tar: the copy fails
	// with the agent's reason, and the stream is not kept.
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vmfest.CopyTo(ctx, m, src, "/tmp", vmfest.CopyOptions{Via: vmfest.CopyViaAgent}); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("copy through an agent without guest-exec: %v, want ErrUnsupported", err)
	}
	rc, err := m.CopyOut(ctx, "/etc", vmfest.CopyOptions{Via: vmfest.CopyViaAgent})
	if err == nil {
		io.Copy(io.Discard, rc)
		rc.Close()
		t.Fatal("a copy out through an agent without guest-exec began")
	}
}
