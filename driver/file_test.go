package driver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// fileAgent is a guest agent with in-memory files, answering
// guest-file-open/read/write/close as qemu-ga does (eof set only by a read
// that hits the end). fail names a command to fail; badRead replaces every
// guest-file-read reply.
type fileAgent struct {
	files   map[string][]byte
	handles map[int64]*fileHandle
	next    int64
	fail    string
	badRead string
	closed  []int64
}

type fileHandle struct {
	path string
	pos  int
}

func newFileAgent() *fileAgent {
	return &fileAgent{files: map[string][]byte{}, handles: map[int64]*fileHandle{}, next: 1000}
}

func (f *fileAgent) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil && command != "guest-file-close" {
		return nil, err
	}
	if command == f.fail {
		return nil, errors.New("GenericError: injected failure")
	}
	b, _ := json.Marshal(args)
	var p struct {
		Path   string `json:"path"`
		Mode   string `json:"mode"`
		Handle int64  `json:"handle"`
		Count  int    `json:"count"`
		Buf    string `json:"buf-b64"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	h := f.handles[p.Handle]
	if command != "guest-file-open" && h == nil {
		return nil, fmt.Errorf("GenericError: handle '%d' has not been found", p.Handle)
	}
	switch command {
	case "guest-file-open":
		switch p.Mode {
		case "w":
			f.files[p.Path] = nil
		case "r":
			if _, ok := f.files[p.Path]; !ok {
				return nil, fmt.Errorf("GenericError: failed to open file '%s' (mode: 'r'): No such file or directory", p.Path)
			}
		}
		f.next++
		f.handles[f.next] = &fileHandle{path: p.Path}
		return json.Marshal(f.next)
	case "guest-file-write":
		data, err := base64.StdEncoding.DecodeString(p.Buf)
		if err != nil {
			return nil, err
		}
		f.files[h.path] = append(f.files[h.path], data...)
		return json.Marshal(fileWrite{Count: len(data)})
	case "guest-file-read":
		if f.badRead != "" {
			return json.RawMessage(f.badRead), nil
		}
		data := f.files[h.path][h.pos:]
		data = data[:min(len(data), p.Count)]
		h.pos += len(data)
		return json.Marshal(fileRead{Count: len(data), Buf: base64.StdEncoding.EncodeToString(data), EOF: len(data) == 0})
	case "guest-file-close":
		delete(f.handles, p.Handle)
		f.closed = append(f.closed, p.Handle)
		return json.RawMessage("{}"), nil
	}
	return nil, errors.New("CommandNotFound: " + command)
}

func (f *fileAgent) Close() error { return nil }

func TestWriteReadFile(t *testing.T) {
	for _, size := range []int{0, 1, FileChunk - 1, FileChunk, 2*FileChunk + 17} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			a := newFileAgent()
			data := make([]byte, size)
			rand.Read(data)
			n, err := WriteFile(t.Context(), a, "/tmp/f", bytes.NewReader(data))
			if err != nil || n != int64(size) {
				t.Fatalf("WriteFile: %d, %v", n, err)
			}
			if !bytes.Equal(a.files["/tmp/f"], data) {
				t.Fatal("the guest file differs from what was written")
			}
			var back bytes.Buffer
			n, err = ReadFile(t.Context(), a, "/tmp/f", &back)
			if err != nil || n != int64(size) {
				t.Fatalf("ReadFile: %d, %v", n, err)
			}
			if !bytes.Equal(back.Bytes(), data) {
				t.Fatal("what was read differs from the guest file")
			}
			if len(a.handles) != 0 || len(a.closed) != 2 {
				t.Fatalf("handles left open: %v (closed %v)", a.handles, a.closed)
			}
		})
	}
}

func TestFileErrors(t *testing.T) {
	big := bytes.Repeat([]byte("x"), FileChunk+1)
	tests := []struct {
		name    string
		setup   func(a *fileAgent)
		read    bool
		wantErr string
	}{
		{name: "read a missing file", read: true, wantErr: "open /tmp/f in the guest: GenericError: failed to open"},
		{name: "open refused", setup: func(a *fileAgent) { a.fail = "guest-file-open" }, wantErr: "open /tmp/f in the guest"},
		{name: "write fails", setup: func(a *fileAgent) { a.fail = "guest-file-write" }, wantErr: "write /tmp/f in the guest at byte 0"},
		{name: "read fails", read: true, setup: func(a *fileAgent) { a.files["/tmp/f"] = big; a.fail = "guest-file-read" }, wantErr: "read /tmp/f in the guest at byte 0"},
		{name: "close fails", setup: func(a *fileAgent) { a.fail = "guest-file-close" }, wantErr: "close /tmp/f in the guest"},
		{name: "a read reply longer than its count", read: true,
			setup:   func(a *fileAgent) { a.files["/tmp/f"] = nil; a.badRead = `{"count":1,"buf-b64":"aGk=","eof":false}` },
			wantErr: "sent 2 bytes for a count of 1"},
		{name: "a read reply that is not base64", read: true,
			setup:   func(a *fileAgent) { a.files["/tmp/f"] = nil; a.badRead = `{"count":1,"buf-b64":"!!","eof":false}` },
			wantErr: "not base64"},
		{name: "a read reply that is not an object", read: true,
			setup:   func(a *fileAgent) { a.files["/tmp/f"] = nil; a.badRead = `[1]` },
			wantErr: "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newFileAgent()
			if tt.setup != nil {
				tt.setup(a)
			}
			var err error
			if tt.read {
				_, err = ReadFile(t.Context(), a, "/tmp/f", &bytes.Buffer{})
			} else {
				_, err = WriteFile(t.Context(), a, "/tmp/f", bytes.NewReader(big))
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one with %q", err, tt.wantErr)
			}
			if len(a.handles) != 0 && tt.name != "close fails" {
				t.Fatalf("handles left open: %v", a.handles)
			}
		})
	}
}

// TestWriteFileClosesAfterCancel: a canceled copy still closes its handle.
func TestWriteFileClosesAfterCancel(t *testing.T) {
	a := newFileAgent()
	ctx, cancel := context.WithCancel(t.Context())
	r := &cancelingReader{cancel: cancel}
	if _, err := WriteFile(ctx, a, "/tmp/f", r); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if len(a.handles) != 0 {
		t.Fatalf("handle left open after cancel: %v", a.handles)
	}
}

// cancelingReader yields one full chunk, then cancels its context.
type cancelingReader struct {
	cancel func()
	done   int
}

func (r *cancelingReader) Read(p []byte) (int, error) {
	if r.done >= FileChunk {
		r.cancel()
		r.done = 0
		return 0, nil
	}
	n := min(len(p), FileChunk-r.done)
	r.done += n
	return n, nil
}
