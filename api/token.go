package api

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/store"
)

// TokenFile is the name of the bearer token's file in the state directory.
const TokenFile = "token"

func newToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate a token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// LoadToken reads the token at path, creating it (mode 0600) when missing.
// A token file that is not a regular file owned by this process's user and
// closed to group and others is refused (see tokenFileError).
func LoadToken(path string) (string, error) {
	tok, _, err := readToken(path)
	if errors.Is(err, fs.ErrNotExist) {
		return RotateToken(path)
	}
	return tok, err
}

// tokenFileError is a token file refused for its type, mode or owner.
// Reason is what a client may be told (it names no path).
type tokenFileError struct {
	path, reason string
}

func (e *tokenFileError) Error() string { return "token " + e.path + ": " + e.reason }

// tokenKey identifies one version of a token file: the same file (device
// and inode), unchanged (mtime and size), still private (mode and owner).
type tokenKey struct {
	dev, ino uint64
	mod      time.Time
	size     int64
	mode     fs.FileMode
	uid      uint32
}

// checkTokenFile refuses a token file others could read or change.
func checkTokenFile(path string, st fs.FileInfo) (tokenKey, error) {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return tokenKey{}, &tokenFileError{path, "cannot read its owner"}
	}
	key := tokenKey{dev: uint64(sys.Dev), ino: sys.Ino, mod: st.ModTime(), size: st.Size(), mode: st.Mode(), uid: sys.Uid}
	switch {
	case !st.Mode().IsRegular():
		return key, &tokenFileError{path, fmt.Sprintf("not a regular file (%v)", st.Mode().Type())}
	case st.Mode().Perm()&0o077 != 0:
		return key, &tokenFileError{path, fmt.Sprintf("mode %v lets others (group or world) read or change it: chmod 600 it, or rotate it (vmfest serve --rotate-token)", st.Mode().Perm())}
	case int(sys.Uid) != os.Geteuid():
		return key, &tokenFileError{path, fmt.Sprintf("owned by uid %d, not by the server's user (uid %d): chown it, or rotate it (vmfest serve --rotate-token)", sys.Uid, os.Geteuid())}
	}
	return key, nil
}

// openToken opens path for reading without blocking on a FIFO (whose
// type the check that follows then refuses).
func openToken(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
}

// readToken opens the token file, checks what it opened (not the path,
// which may change in between) and reads the token from it.
func readToken(path string) (string, tokenKey, error) {
	f, err := openToken(path)
	if err != nil {
		return "", tokenKey{}, fmt.Errorf("token: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", tokenKey{}, fmt.Errorf("token: %w", err)
	}
	key, err := checkTokenFile(path, st)
	if err != nil {
		return "", key, err
	}
	data, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", key, fmt.Errorf("token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if len(tok) < 16 {
		return "", key, &tokenFileError{path, "too short (rotate it: vmfest serve --rotate-token)"}
	}
	return tok, key, nil
}

// RotateToken writes a new random token to path (mode 0600) and returns
// it. A running server picks it up on its next request; the old token
// stops working then.
func RotateToken(path string) (string, error) {
	tok, err := newToken()
	if err != nil {
		return "", err
	}
	if err := store.WriteFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	return tok, nil
}

// tokenFile reads the token file again whenever it changes, so a rotation
// takes effect without a restart, and checks its type, mode and owner on
// every use, so a file opened to others after start is no longer honoured.
type tokenFile struct {
	path   string
	log    *slog.Logger
	mu     sync.Mutex
	key    tokenKey
	token  string
	logged string // the last refusal logged, so a bad file is logged once
}

func (t *tokenFile) current() (string, error) {
	f, err := openToken(t.path)
	if err != nil {
		return "", t.refused(err)
	}
	st, err := f.Stat()
	f.Close()
	if err != nil {
		return "", t.refused(err)
	}
	key, err := checkTokenFile(t.path, st)
	if err != nil {
		return "", t.refused(err)
	}
	t.mu.Lock()
	if t.token != "" && key == t.key {
		tok := t.token
		t.mu.Unlock()
		return tok, nil
	}
	t.mu.Unlock()
	tok, key, err := readToken(t.path)
	if err != nil {
		return "", t.refused(err)
	}
	t.mu.Lock()
	t.token, t.key, t.logged = tok, key, ""
	t.mu.Unlock()
	return tok, nil
}

// refused logs why the token file cannot be used (once for each reason)
// and forgets the cached token.
func (t *tokenFile) refused(err error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.token = ""
	if msg := err.Error(); msg != t.logged {
		t.logged = msg
		t.log.Warn("refusing every TCP request: the token file cannot be used", "err", err)
	}
	return err
}

// RequireToken wraps next so that every request but GET /healthz needs
// "Authorization: Bearer TOKEN" with the token in the file at path; others
// get 401 and nothing is done. While the token file is missing, unreadable
// or open to others every request gets 503.
func RequireToken(next http.Handler, path string) http.Handler {
	return requireToken(next, path, slog.Default())
}

func requireToken(next http.Handler, path string, log *slog.Logger) http.Handler {
	tf := &tokenFile{path: path, log: log}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		want, err := tf.current()
		if err != nil {
			msg := "the server cannot read its token file (its log says why)"
			var te *tokenFileError
			if errors.As(err, &te) {
				msg = "the server refuses its token file: " + te.reason
			}
			writeJSON(w, http.StatusServiceUnavailable, wire.Error{Error: msg, Code: wire.CodeUnavailable})
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(want)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="vmfest"`)
			msg := "missing bearer token: send Authorization: Bearer TOKEN (the token is in the server's $VMFEST_HOME/token)"
			if ok {
				msg = "wrong bearer token"
			}
			writeJSON(w, http.StatusUnauthorized, wire.Error{Error: msg, Code: wire.CodeUnauthorized})
			return
		}
		next.ServeHTTP(w, r)
	})
}
