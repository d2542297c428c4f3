package qga

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func openHandle(t *testing.T, a *Agent, path, mode string) int64 {
	t.Helper()
	var h int64
	if err := json.Unmarshal(call(t, a, "guest-file-open", map[string]any{"path": path, "mode": mode}), &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestFileWriteReadSeek writes a file in chunks, reads it back in chunks
// to its end, seeks, and closes, as qemu-ga answers.
func TestFileWriteReadSeek(t *testing.T) {
	a := &Agent{}
	path := filepath.Join(t.TempDir(), "f")
	h := openHandle(t, a, path, "w")
	data := bytes.Repeat([]byte("0123456789"), 1000)
	for off := 0; off < len(data); off += 3000 {
		chunk := data[off:min(off+3000, len(data))]
		var w FileWrite
		json.Unmarshal(call(t, a, "guest-file-write", map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(chunk)}), &w)
		if w.Count != len(chunk) {
			t.Fatalf("wrote %d of %d", w.Count, len(chunk))
		}
	}
	call(t, a, "guest-file-flush", map[string]any{"handle": h})
	call(t, a, "guest-file-close", map[string]any{"handle": h})
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatalf("the file holds %d bytes, want %d", len(got), len(data))
	}

	h = openHandle(t, a, path, "r")
	var back []byte
	for {
		var r FileRead
		json.Unmarshal(call(t, a, "guest-file-read", map[string]any{"handle": h, "count": 4096}), &r)
		b, _ := base64.StdEncoding.DecodeString(r.Buf)
		if len(b) != r.Count {
			t.Fatalf("count %d for %d bytes", r.Count, len(b))
		}
		back = append(back, b...)
		if r.EOF {
			break
		}
	}
	if !bytes.Equal(back, data) {
		t.Fatal("read back differs")
	}
	for _, whence := range []any{"set", 0} {
		var s FileSeek
		json.Unmarshal(call(t, a, "guest-file-seek", map[string]any{"handle": h, "offset": 5, "whence": whence}), &s)
		if s.Position != 5 {
			t.Fatalf("seek %v: position %d", whence, s.Position)
		}
	}
	var s FileSeek
	json.Unmarshal(call(t, a, "guest-file-seek", map[string]any{"handle": h, "offset": -2, "whence": "end"}), &s)
	if s.Position != int64(len(data)-2) {
		t.Fatalf("seek from the end: position %d", s.Position)
	}
	var r FileRead
	json.Unmarshal(call(t, a, "guest-file-read", map[string]any{"handle": h}), &r)
	if r.Count != 2 || !r.EOF || r.Buf != base64.StdEncoding.EncodeToString([]byte("89")) {
		t.Fatalf("read after seek: %+v", r)
	}
	call(t, a, "guest-file-close", map[string]any{"handle": h})
	if _, qe := try(t, a, "guest-file-read", map[string]any{"handle": h}); qe == nil || !strings.Contains(qe.Desc, "has not been found") {
		t.Fatalf("read of a closed handle: %v", qe)
	}
}

func TestFileErrors(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "exists")
	os.WriteFile(existing, []byte("x"), 0o644)
	a := &Agent{}
	h := openHandle(t, a, existing, "r+")
	tests := []struct {
		command string
		args    map[string]any
		want    string
	}{
		{"guest-file-open", map[string]any{}, "Parameter 'path' is missing"},
		{"guest-file-open", map[string]any{"path": filepath.Join(dir, "none")}, "no such file or directory"},
		{"guest-file-open", map[string]any{"path": existing, "mode": "q"}, "invalid file open mode 'q'"},
		{"guest-file-open", map[string]any{"path": existing, "mode": "rx"}, "invalid file open mode 'rx'"},
		{"guest-file-open", map[string]any{"path": existing, "mode": "wx"}, "file exists"},
		{"guest-file-read", map[string]any{}, "Parameter 'handle' is missing"},
		{"guest-file-read", map[string]any{"handle": 7}, "handle '7' has not been found"},
		{"guest-file-read", map[string]any{"handle": "x"}, "Invalid arguments"},
		{"guest-file-read", map[string]any{"handle": h, "count": MaxFileRead + 1}, "invalid for argument count"},
		{"guest-file-read", map[string]any{"handle": h, "count": -1}, "invalid for argument count"},
		{"guest-file-write", map[string]any{"handle": h}, "Parameter 'buf-b64' is missing"},
		{"guest-file-write", map[string]any{"handle": h, "buf-b64": "!!"}, "not base64"},
		{"guest-file-write", map[string]any{"handle": h, "buf-b64": "aGk=", "count": 3}, "invalid for argument count"},
		{"guest-file-seek", map[string]any{"handle": h, "offset": 0}, "Parameter 'whence' is missing"},
		{"guest-file-seek", map[string]any{"handle": h, "offset": 0, "whence": "middle"}, "invalid whence code"},
		{"guest-file-seek", map[string]any{"handle": h, "offset": 0, "whence": 3}, "invalid whence code"},
		{"guest-file-seek", map[string]any{"handle": h, "whence": 0}, "Parameter 'offset' is missing"},
		{"guest-file-close", map[string]any{"handle": 1}, "has not been found"},
	}
	for _, tt := range tests {
		t.Run(tt.command+" "+tt.want, func(t *testing.T) {
			_, qe := try(t, a, tt.command, tt.args)
			if qe == nil || !strings.Contains(qe.Desc, tt.want) {
				t.Fatalf("error %v, want one with %q", qe, tt.want)
			}
		})
	}
	// A write of the first count bytes only.
	call(t, a, "guest-file-write", map[string]any{"handle": h, "buf-b64": "aGk=", "count": 1})
	call(t, a, "guest-file-close", map[string]any{"handle": h})
	if got, _ := os.ReadFile(existing); string(got) != "h" {
		t.Fatalf("the file holds %q, want %q", got, "h")
	}
}

// TestFileOpenBound: at most MaxOpenFiles handles are open at once; a
// closed one makes room.
func TestFileOpenBound(t *testing.T) {
	a := &Agent{}
	path := filepath.Join(t.TempDir(), "f")
	os.WriteFile(path, nil, 0o644)
	var handles []int64
	for range MaxOpenFiles {
		handles = append(handles, openHandle(t, a, path, "r"))
	}
	if _, qe := try(t, a, "guest-file-open", map[string]any{"path": path}); qe == nil || !strings.Contains(qe.Desc, "files are open already") {
		t.Fatalf("open past the bound: %v", qe)
	}
	call(t, a, "guest-file-close", map[string]any{"handle": handles[0]})
	h := openHandle(t, a, path, "r")
	for _, old := range handles {
		if h == old {
			t.Fatalf("handle %d given out again", h)
		}
	}
	for _, h := range append(handles[1:], h) {
		call(t, a, "guest-file-close", map[string]any{"handle": h})
	}
}

// BenchmarkServeWrite: one guest-file-write of a 2 MiB chunk (2.7 MiB of
// base64) through Serve, as the host sends it.
func BenchmarkServeWrite(b *testing.B) {
	a := &Agent{}
	path := filepath.Join(b.TempDir(), "f")
	var h int64
	r, _, _ := a.Handle([]byte(`{"execute":"guest-file-open","arguments":{"path":"` + path + `","mode":"w"}}`))
	var resp struct{ Return int64 }
	json.Unmarshal(r, &resp)
	h = resp.Return
	chunk := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 2<<20))
	req, _ := json.Marshal(map[string]any{"execute": "guest-file-write", "arguments": map[string]any{"handle": h, "buf-b64": chunk}})
	b.SetBytes(2 << 20)
	for b.Loop() {
		a.Serve(bytes.NewReader(req), io.Discard)
	}
}
