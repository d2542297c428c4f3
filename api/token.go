package api

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"sync"
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
// A token file that others can read is refused.
func LoadToken(path string) (string, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return RotateToken(path)
	}
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("token %s: mode %v lets others read it; chmod 600 it or rotate it", path, st.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if len(tok) < 16 {
		return "", fmt.Errorf("token %s: too short (rotate it)", path)
	}
	return tok, nil
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
// takes effect without a restart.
type tokenFile struct {
	path  string
	mu    sync.Mutex
	mod   time.Time
	size  int64
	token string
}

func (t *tokenFile) current() (string, error) {
	st, err := os.Stat(t.path)
	if err != nil {
		return "", err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.token != "" && st.ModTime().Equal(t.mod) && st.Size() == t.size {
		return t.token, nil
	}
	tok, err := LoadToken(t.path)
	if err != nil {
		return "", err
	}
	t.token, t.mod, t.size = tok, st.ModTime(), st.Size()
	return tok, nil
}

// RequireToken wraps next so that every request but GET /healthz needs
// "Authorization: Bearer TOKEN" with the token in the file at path; others
// get 401 and nothing is done.
func RequireToken(next http.Handler, path string) http.Handler {
	tf := &tokenFile{path: path}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		want, err := tf.current()
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, wire.Error{Error: "the server cannot read its token", Code: wire.CodeUnavailable})
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
