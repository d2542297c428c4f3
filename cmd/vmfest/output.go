package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// lockedWriter serializes writes to w: commands that act on several
// machines at once (start a b c) print from several goroutines, and each
// line must come out whole.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// warningHandler is the slog.Handler of the CLI's Local: it prints a
// WARN (or ERROR) record as one line, "warning: MSG (KEY=VALUE ...)", on
// w, and only the first record of each message in a command, so that a
// note the driver gives per machine (TCG's, for one) is said once for
// "start a b c". A record does not fail the command (its returned error
// does), so every record is a warning to the user. Below WARN nothing is
// printed: -v uses slog's text handler instead.
type warningHandler struct {
	w     io.Writer
	attrs []slog.Attr
	// seen is shared by the handler and those WithAttrs derives.
	mu   *sync.Mutex
	seen map[string]bool
}

func newWarningHandler(w io.Writer) *warningHandler {
	return &warningHandler{w: w, mu: &sync.Mutex{}, seen: map[string]bool{}}
}

func (h *warningHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *warningHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen[r.Message] {
		return nil
	}
	h.seen[r.Message] = true
	var kv []string
	add := func(a slog.Attr) bool {
		if !a.Equal(slog.Attr{}) {
			kv = append(kv, fmt.Sprintf("%s=%s", a.Key, oneLine(a.Value.Resolve().String())))
		}
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	line := "warning: " + oneLine(r.Message)
	if len(kv) > 0 {
		line += " (" + strings.Join(kv, " ") + ")"
	}
	_, err := io.WriteString(h.w, line+"\n")
	return err
}

func (h *warningHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr{}, h.attrs...), attrs...)
	return &c
}

// WithGroup is not used by vmfest's loggers; the group's attributes are
// printed with their own keys.
func (h *warningHandler) WithGroup(string) slog.Handler { return h }
