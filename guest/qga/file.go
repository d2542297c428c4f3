package qga

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"sync"
)

// The file calls' bounds. qemu-ga reads up to 48 MiB a call; this agent
// reads at most MaxFileRead, so a reply (base64, 4/3 larger) stays well
// within the 16 MiB reply line vmfest's host side reads. A write is bounded
// by the request size (maxRequest).
const (
	// MaxOpenFiles bounds the handles open at once; the next open fails.
	MaxOpenFiles = 32
	// MaxFileRead bounds guest-file-read's count.
	MaxFileRead = 4 << 20
	// defaultFileRead is guest-file-read's count when none is given, as
	// qemu-ga's QGA_READ_COUNT_DEFAULT.
	defaultFileRead = 4096
	// firstHandle is the first handle given out; handles only grow, so a
	// closed handle is never mistaken for a later file.
	firstHandle = 1000
)

// FileRead is guest-file-read's reply (QEMU's GuestFileRead).
type FileRead struct {
	Count int    `json:"count"`
	Buf   string `json:"buf-b64"`
	EOF   bool   `json:"eof"`
}

// FileWrite is guest-file-write's reply (QEMU's GuestFileWrite).
type FileWrite struct {
	Count int  `json:"count"`
	EOF   bool `json:"eof"`
}

// FileSeek is guest-file-seek's reply (QEMU's GuestFileSeek).
type FileSeek struct {
	Position int64 `json:"position"`
	EOF      bool  `json:"eof"`
}

// fileTable holds the files guest-file-open opened until guest-file-close.
type fileTable struct {
	mu    sync.Mutex
	files map[int64]*os.File
	next  int64
}

// openFlags maps an fopen(3) mode (r, w, a, each with an optional +, and
// b, x or e anywhere after the first letter) to open(2) flags.
func openFlags(mode string) (int, bool) {
	if mode == "" {
		return 0, false
	}
	var flags int
	switch mode[0] {
	case 'r':
		flags = os.O_RDONLY
	case 'w':
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	case 'a':
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	default:
		return 0, false
	}
	for _, c := range mode[1:] {
		switch c {
		case '+':
			flags = flags&^(os.O_RDONLY|os.O_WRONLY) | os.O_RDWR
		case 'b', 'e':
		case 'x':
			if mode[0] != 'w' {
				return 0, false
			}
			flags |= os.O_EXCL
		default:
			return 0, false
		}
	}
	return flags, true
}

// handleArg reads the handle argument and finds its file.
func (a *Agent) handleArg(raw *json.Number) (int64, *os.File, error) {
	if raw == nil {
		return 0, nil, Errorf("Parameter 'handle' is missing")
	}
	h, err := raw.Int64()
	if err != nil {
		return 0, nil, Errorf("Invalid parameter type for 'handle', expected: integer")
	}
	a.files.mu.Lock()
	defer a.files.mu.Unlock()
	f, ok := a.files.files[h]
	if !ok {
		return 0, nil, Errorf("handle '%d' has not been found", h)
	}
	return h, f, nil
}

// fileOpen implements guest-file-open: path opened with an fopen(3) mode
// (default r); new files get mode 0666 less the umask. At most
// MaxOpenFiles are open at once.
func (a *Agent) fileOpen(args json.RawMessage) (any, error) {
	var p struct {
		Path *string `json:"path"`
		Mode *string `json:"mode"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	if p.Path == nil {
		return nil, Errorf("Parameter 'path' is missing")
	}
	mode := "r"
	if p.Mode != nil {
		mode = *p.Mode
	}
	flags, ok := openFlags(mode)
	if !ok {
		return nil, Errorf("invalid file open mode '%s'", mode)
	}
	a.files.mu.Lock()
	defer a.files.mu.Unlock()
	if len(a.files.files) >= MaxOpenFiles {
		return nil, Errorf("failed to open file '%s': %d files are open already, the most this agent keeps", *p.Path, MaxOpenFiles)
	}
	f, err := os.OpenFile(*p.Path, flags, 0o666)
	if err != nil {
		return nil, Errorf("failed to open file '%s' (mode: '%s'): %v", *p.Path, mode, errors.Unwrap(err))
	}
	if a.files.files == nil {
		a.files.files = map[int64]*os.File{}
		a.files.next = firstHandle
	}
	a.files.next++
	a.files.files[a.files.next] = f
	a.logf("guest-file-open %s (%s): handle %d", *p.Path, mode, a.files.next)
	return a.files.next, nil
}

// fileClose implements guest-file-close.
func (a *Agent) fileClose(args json.RawMessage) (any, error) {
	var p struct {
		Handle *json.Number `json:"handle"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	h, f, err := a.handleArg(p.Handle)
	if err != nil {
		return nil, err
	}
	a.files.mu.Lock()
	delete(a.files.files, h)
	a.files.mu.Unlock()
	if err := f.Close(); err != nil {
		return nil, Errorf("failed to close handle: %v", err)
	}
	return struct{}{}, nil
}

// fileRead implements guest-file-read: up to count bytes (default 4096, at
// most MaxFileRead); eof is set when the read reached the file's end.
func (a *Agent) fileRead(args json.RawMessage) (any, error) {
	var p struct {
		Handle *json.Number `json:"handle"`
		Count  *json.Number `json:"count"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	_, f, err := a.handleArg(p.Handle)
	if err != nil {
		return nil, err
	}
	count := int64(defaultFileRead)
	if p.Count != nil {
		if count, err = p.Count.Int64(); err != nil {
			return nil, Errorf("Invalid parameter type for 'count', expected: integer")
		}
	}
	if count < 0 || count > MaxFileRead {
		return nil, Errorf("value '%d' is invalid for argument count (0 to %d)", count, MaxFileRead)
	}
	buf := make([]byte, count)
	n, err := io.ReadFull(f, buf)
	eof := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
	if err != nil && !eof {
		return nil, Errorf("failed to read file: %v", err)
	}
	return FileRead{Count: n, Buf: base64.StdEncoding.EncodeToString(buf[:n]), EOF: eof}, nil
}

// fileWrite implements guest-file-write: buf-b64 decoded, its first count
// bytes (default all) written.
func (a *Agent) fileWrite(args json.RawMessage) (any, error) {
	var p struct {
		Handle *json.Number `json:"handle"`
		Buf    *string      `json:"buf-b64"`
		Count  *json.Number `json:"count"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	_, f, err := a.handleArg(p.Handle)
	if err != nil {
		return nil, err
	}
	if p.Buf == nil {
		return nil, Errorf("Parameter 'buf-b64' is missing")
	}
	data, err := base64.StdEncoding.DecodeString(*p.Buf)
	if err != nil {
		return nil, Errorf("Invalid parameter 'buf-b64': not base64: %v", err)
	}
	if p.Count != nil {
		count, err := p.Count.Int64()
		if err != nil {
			return nil, Errorf("Invalid parameter type for 'count', expected: integer")
		}
		if count < 0 || count > int64(len(data)) {
			return nil, Errorf("value '%d' is invalid for argument count", count)
		}
		data = data[:count]
	}
	n, err := f.Write(data)
	if err != nil {
		return nil, Errorf("failed to write to file: %v", err)
	}
	return FileWrite{Count: n}, nil
}

// fileSeek implements guest-file-seek: whence is set, cur or end, or
// QEMU's numbers for them (0, 1, 2).
func (a *Agent) fileSeek(args json.RawMessage) (any, error) {
	var p struct {
		Handle *json.Number    `json:"handle"`
		Offset *json.Number    `json:"offset"`
		Whence json.RawMessage `json:"whence"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	_, f, err := a.handleArg(p.Handle)
	if err != nil {
		return nil, err
	}
	if p.Offset == nil {
		return nil, Errorf("Parameter 'offset' is missing")
	}
	off, err := p.Offset.Int64()
	if err != nil {
		return nil, Errorf("Invalid parameter type for 'offset', expected: integer")
	}
	whence := -1
	var name string
	var num int
	switch {
	case len(p.Whence) == 0:
		return nil, Errorf("Parameter 'whence' is missing")
	case json.Unmarshal(p.Whence, &name) == nil:
		if w, ok := map[string]int{"set": io.SeekStart, "cur": io.SeekCurrent, "end": io.SeekEnd}[name]; ok {
			whence = w
		}
	case json.Unmarshal(p.Whence, &num) == nil:
		whence = num
	}
	if whence < io.SeekStart || whence > io.SeekEnd {
		return nil, Errorf("invalid whence code %s", p.Whence)
	}
	pos, err := f.Seek(off, whence)
	if err != nil {
		return nil, Errorf("failed to seek file: %v", err)
	}
	return FileSeek{Position: pos}, nil
}

// fileFlush implements guest-file-flush. The agent buffers nothing (each
// write is a write(2)), so it only checks the handle.
func (a *Agent) fileFlush(args json.RawMessage) (any, error) {
	var p struct {
		Handle *json.Number `json:"handle"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	if _, _, err := a.handleArg(p.Handle); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}
