package api

import (
	"context"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeSocketAccess: the Unix socket is 0600 and keeps its creator's
// group unless told otherwise; a group and 0660 are given as asked; any
// other mode, and a group that does not exist, are refused before anything
// is opened.
func TestServeSocketAccess(t *testing.T) {
	const otherGID = 65533 // chown to a gid one is not in needs root
	e := newEnv(t)
	for _, tc := range []struct {
		name  string
		lc    Listen
		mode  fs.FileMode
		gid   int
		want  string
		asked bool // needs root (a group one is not in)
	}{
		{name: "default", mode: 0o600, gid: os.Getegid()},
		{name: "group", lc: Listen{SocketGroup: strconv.Itoa(otherGID), SocketMode: 0o660}, mode: 0o660, gid: otherGID, asked: true},
		{name: "group-private", lc: Listen{SocketGroup: strconv.Itoa(otherGID)}, mode: 0o600, gid: otherGID, asked: true},
		{name: "world", lc: Listen{SocketMode: 0o666}, want: "give 0600"},
		{name: "group-read", lc: Listen{SocketMode: 0o640}, want: "give 0600"},
		{name: "no-group", lc: Listen{SocketGroup: "vmfest-no-such-group", SocketMode: 0o660}, want: "groupadd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.asked && os.Geteuid() != 0 {
				t.Skip("giving a socket another group needs root")
			}
			path := filepath.Join(t.TempDir(), "api.sock")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s, err := New(ctx, e.local, Config{Home: e.home, Logger: quiet()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			lc := tc.lc
			lc.Unix = path
			done := make(chan error, 1)
			go func() { done <- s.Serve(ctx, lc) }()
			if tc.want != "" {
				select {
				case err := <-done:
					if err == nil || !strings.Contains(err.Error(), tc.want) {
						t.Fatalf("serve: %v, want it to say %q", err, tc.want)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("served with a refused socket mode or group")
				}
				if _, err := os.Lstat(path); err == nil {
					t.Fatalf("%s made although refused", path)
				}
				return
			}
			waitListening(t, "unix", path, done)
			st, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != tc.mode || int(st.Sys().(*syscall.Stat_t).Gid) != tc.gid {
				t.Errorf("socket %v gid %d, want %v gid %d", st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Gid, tc.mode, tc.gid)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("serve: %v", err)
			}
		})
	}
}

// TestUnixPeerIsRemote: on a socket its group may open, a caller who is
// neither root nor the server's user is treated as a remote caller (its
// setup-model fetches are restricted); root is this host's user.
func TestUnixPeerIsRemote(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test connects as another uid")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("needs curl, run as another uid")
	}
	e := newEnv(t)
	rec := &callerRecorder{Server: e.local}
	s, err := New(context.Background(), rec, Config{Home: e.home, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	dir, err := os.MkdirTemp("", "vmfest-peer") // t.TempDir's parent is 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const uid, gid = 65532, 65532
	sock := filepath.Join(dir, "api.sock")
	done := make(chan error, 1)
	go func() {
		done <- s.Serve(ctx, Listen{Unix: sock, SocketGroup: strconv.Itoa(gid), SocketMode: 0o660})
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitListening(t, "unix", sock, done)
	get := func(cred *syscall.Credential) {
		t.Helper()
		cmd := exec.CommandContext(ctx, curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", sock, "http://vmfest/v1/hardware")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if err != nil || string(out) != strconv.Itoa(http.StatusOK) {
			t.Fatalf("curl as %+v: %s %v", cred, out, err)
		}
	}
	get(nil)
	get(&syscall.Credential{Uid: uid, Gid: gid})
	rec.mu.Lock()
	got := append([]bool(nil), rec.local...)
	rec.mu.Unlock()
	if len(got) != 2 || !got[0] || got[1] {
		t.Fatalf("local caller seen as %v, want [root:true member:false]", got)
	}
	// Outside the group: the kernel refuses the connection.
	cmd := exec.CommandContext(ctx, curl, "-sS", "--unix-socket", sock, "http://vmfest/healthz")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid + 1}}
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("a caller outside the socket's group connected: %s", out)
	}
}
