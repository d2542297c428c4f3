package driver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// FileChunk is how many bytes one guest-file-read or guest-file-write
// carries: 2 MiB, under 3 MiB once base64-encoded, well within the 16 MiB
// reply line the QEMU driver reads and the 8 MiB request vmfest's tiny
// guest agent takes (qemu-ga allows 48 MiB).
const FileChunk = 2 << 20

// closeTimeout bounds the guest-file-close sent after the caller's ctx has
// ended, so a handle is not left open in the guest agent.
const closeTimeout = 5 * time.Second

// fileRead is guest-file-read's reply (GuestFileRead).
type fileRead struct {
	Count int    `json:"count"`
	Buf   string `json:"buf-b64"`
	EOF   bool   `json:"eof"`
}

// fileWrite is guest-file-write's reply (GuestFileWrite).
type fileWrite struct {
	Count int  `json:"count"`
	EOF   bool `json:"eof"`
}

// openFile opens path in the guest with an fopen(3) mode and returns the
// guest agent's handle.
func openFile(ctx context.Context, a Agent, path, mode string) (int64, error) {
	raw, err := a.Execute(ctx, "guest-file-open", map[string]string{"path": path, "mode": mode})
	if err != nil {
		return 0, fmt.Errorf("open %s in the guest: %w", path, err)
	}
	var h int64
	if err := json.Unmarshal(raw, &h); err != nil {
		return 0, fmt.Errorf("open %s in the guest: the guest agent's guest-file-open reply is not a handle: %.200s", path, raw)
	}
	return h, nil
}

// closeFile closes a guest agent handle, even after ctx has ended.
func closeFile(ctx context.Context, a Agent, path string, h int64) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
	defer cancel()
	if _, err := a.Execute(cctx, "guest-file-close", map[string]int64{"handle": h}); err != nil {
		return fmt.Errorf("close %s in the guest: %w", path, err)
	}
	return nil
}

// WriteFile creates (or truncates) the guest file path and writes
// everything r yields into it through the guest agent (guest-file-open,
// guest-file-write in FileChunk pieces, guest-file-close), and returns the
// bytes written. The handle is closed on every path; on error the file is
// left as far as it got (the caller removes it). It works with qemu-ga and
// with vmfest's tiny guest agent.
func WriteFile(ctx context.Context, a Agent, path string, r io.Reader) (n int64, err error) {
	h, err := openFile(ctx, a, path, "w")
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := closeFile(ctx, a, path, h); err == nil {
			err = cerr
		}
	}()
	buf := make([]byte, FileChunk)
	for {
		k, rerr := io.ReadFull(r, buf)
		if k > 0 {
			raw, err := a.Execute(ctx, "guest-file-write", map[string]any{"handle": h, "buf-b64": base64.StdEncoding.EncodeToString(buf[:k])})
			if err != nil {
				return n, fmt.Errorf("write %s in the guest at byte %d: %w", path, n, err)
			}
			var w fileWrite
			if err := json.Unmarshal(raw, &w); err != nil {
				return n, fmt.Errorf("write %s in the guest: the guest agent's guest-file-write reply is malformed: %.200s", path, raw)
			}
			if w.Count != k {
				return n + int64(max(w.Count, 0)), fmt.Errorf("write %s in the guest at byte %d: the guest agent wrote %d of %d bytes", path, n, w.Count, k)
			}
			n += int64(k)
		}
		switch {
		case errors.Is(rerr, io.EOF), errors.Is(rerr, io.ErrUnexpectedEOF):
			return n, nil
		case rerr != nil:
			return n, fmt.Errorf("write %s in the guest: reading what to write: %w", path, rerr)
		}
	}
}

// ReadFile reads the guest file path through the guest agent
// (guest-file-open, guest-file-read in FileChunk pieces until its end,
// guest-file-close) into w, and returns the bytes read. The handle is
// closed on every path. A reply that claims more bytes than were asked
// for, or whose data does not match its count, is an error.
func ReadFile(ctx context.Context, a Agent, path string, w io.Writer) (n int64, err error) {
	h, err := openFile(ctx, a, path, "r")
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := closeFile(ctx, a, path, h); err == nil {
			err = cerr
		}
	}()
	for {
		raw, err := a.Execute(ctx, "guest-file-read", map[string]int64{"handle": h, "count": FileChunk})
		if err != nil {
			return n, fmt.Errorf("read %s in the guest at byte %d: %w", path, n, err)
		}
		var rd fileRead
		if err := json.Unmarshal(raw, &rd); err != nil {
			return n, fmt.Errorf("read %s in the guest: the guest agent's guest-file-read reply is malformed: %.200s", path, raw)
		}
		data, err := base64.StdEncoding.DecodeString(rd.Buf)
		if err != nil {
			return n, fmt.Errorf("read %s in the guest: the guest agent's buf-b64 is not base64: %w", path, err)
		}
		if len(data) != rd.Count || len(data) > FileChunk {
			return n, fmt.Errorf("read %s in the guest: the guest agent sent %d bytes for a count of %d (asked for at most %d)", path, len(data), rd.Count, FileChunk)
		}
		if len(data) > 0 {
			if _, err := w.Write(data); err != nil {
				return n, err
			}
			n += int64(len(data))
		}
		if rd.EOF || len(data) == 0 {
			return n, nil
		}
	}
}
