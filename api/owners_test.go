package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOwnerGuardBodies: a create gets the caller's uid as its owner label;
// a caller who is not an admin cannot give that label at create nor move
// it by relabelling, nor remove shared objects; an admin can; a request
// without peer credentials is refused.
func TestOwnerGuardBodies(t *testing.T) {
	e := newEnv(t)
	s, err := New(context.Background(), e.local, Config{Home: e.home, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const adminGID = 4242
	var seen string
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		seen = string(data)
	})
	h := s.ownerGuard(next, adminGID)
	member := &peer{cred: unix.Ucred{Uid: 1001, Gid: 1001}, groups: []uint32{77}}
	admin := &peer{cred: unix.Ucred{Uid: 1002, Gid: 1002}, groups: []uint32{77, adminGID}}
	for _, tc := range []struct {
		name, method, path, body string
		who                      *peer
		status                   int
		seen                     string // in the body passed on
	}{
		{"create stamped", "POST", "/v1/machines", `{"name":"m","labels":{"a":"b"}}`, member, 200, `"vmfest/owner":"1001"`},
		{"create without labels", "POST", "/v1/machines", `{"name":"m"}`, member, 200, `"vmfest/owner":"1001"`},
		{"create giving the owner", "POST", "/v1/machines", `{"name":"m","labels":{"vmfest/owner":"0"}}`, member, 403, ""},
		{"admin creates for another", "POST", "/v1/machines", `{"name":"m","labels":{"vmfest/owner":"1001"}}`, admin, 200, `"vmfest/owner":"1001"`},
		{"bad body passed on", "POST", "/v1/machines", `{"name":`, member, 200, `{"name":`},
		{"remove a network", "DELETE", "/v1/networks/n0", "", member, 403, ""},
		{"replace hardware", "PUT", "/v1/hardware/micro", "{}", member, 403, ""},
		{"admin removes a volume", "DELETE", "/v1/volumes/v", "", admin, 200, ""},
		{"create a network", "POST", "/v1/networks", `{"name":"n1"}`, member, 200, `{"name":"n1"}`},
		{"admin moves an owner", "POST", "/v1/machines/m/labels", `{"set":{"vmfest/owner":"1001"}}`, admin, 200, `{"set":{"vmfest/owner":"1001"}}`},
		{"no credentials", "GET", "/v1/machines", "", nil, 403, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen = ""
			r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tc.who != nil {
				r = r.WithContext(context.WithValue(r.Context(), peerKey{}, tc.who))
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.status {
				t.Fatalf("status %d %s, want %d", w.Code, w.Body, tc.status)
			}
			if tc.status == 403 {
				var body struct{ Error, Code string }
				if json.Unmarshal(w.Body.Bytes(), &body) != nil || body.Code != "forbidden" || body.Error == "" {
					t.Errorf("refusal body %s", w.Body)
				}
				return
			}
			if !strings.Contains(seen, tc.seen) {
				t.Errorf("passed on %s, want it to hold %s", seen, tc.seen)
			}
		})
	}
}

// TestOpenAs: a file is opened with the peer's rights, on a thread of its
// own: the server's own rights are untouched afterwards.
func TestOpenAs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it takes another uid's file rights")
	}
	dir, err := os.MkdirTemp("", "vmfest-openas") // t.TempDir's parent is 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	private := filepath.Join(dir, "private")
	public := filepath.Join(dir, "public")
	os.WriteFile(private, nil, 0o600)
	os.WriteFile(public, nil, 0o644)
	os.Chmod(dir, 0o755)
	p := &peer{cred: unix.Ucred{Uid: 65530, Gid: 65530}}
	for _, tc := range []struct {
		path  string
		write bool
		ok    bool
	}{
		{private, false, false},
		{public, false, true},
		{public, true, false},
		{filepath.Join(dir, "missing"), true, true}, // left to the handler
	} {
		if err := openAs(p, tc.path, tc.write); (err == nil) != tc.ok {
			t.Errorf("openAs(%s, write %v) = %v, want ok %v", tc.path, tc.write, err, tc.ok)
		}
	}
	for range 20 { // on every thread the runtime may pick
		f, err := os.OpenFile(private, os.O_RDWR, 0)
		if err != nil {
			t.Fatalf("the server lost its own rights: %v", err)
		}
		f.Close()
	}
}
