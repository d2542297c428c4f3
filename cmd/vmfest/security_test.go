package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/testutil"
)

// TestCLINATPolicy: nat-rules listen on loopback and ports from 1024 up
// unless VMFEST_NAT_ALLOW and VMFEST_NAT_LOW_PORTS allow more; the error
// names the field and what is allowed.
func TestCLINATPolicy(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	hw := func(name, hostIP, port string) string {
		p := filepath.Join(home, name+".yaml")
		doc := "memory-size: 128\nnetwork:\n  - attachment-type: nat\n    nat-rules: [{name: web, host-ip: " + hostIP + ", host-port: " + port + ", guest-port: 80}]\n"
		if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wild := hw("wild", "0.0.0.0", "18080")
	low := hw("low", "127.0.0.1", "80")
	mapped := hw("mapped", `"::ffff:127.0.0.1"`, "18080")
	for _, tc := range []struct {
		name, allow, lowPorts, hw, want string
	}{
		{"wildcard refused", "", "", wild, "network[0].nat-rules[0].host-ip: 0.0.0.0 is outside the addresses NAT rules may listen on; allowed: 127.0.0.0/8"},
		{"wildcard allowed", "0.0.0.0/0", "", wild, ""},
		{"lan prefix does not allow the wildcard", "192.0.2.0/24", "", wild, "allowed: 127.0.0.0/8, 192.0.2.0/24"},
		{"low port refused", "", "", low, "network[0].nat-rules[0].host-port: 80 is below 1024"},
		{"low port allowed", "", "true", low, ""},
		{"mapped", "0.0.0.0/0", "", mapped, "write it as 127.0.0.1"},
		{"bad allow", "everywhere", "", wild, `VMFEST_NAT_ALLOW "everywhere": give an address prefix`},
		{"bad low ports", "", "maybe", low, `VMFEST_NAT_LOW_PORTS="maybe"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(envNATAllow, tc.allow)
			t.Setenv(envNATLowPorts, tc.lowPorts)
			name := "vm" + strings.ReplaceAll(tc.name, " ", "")
			_, _, err := run(t, home, "create", name, "--image", disk, "--hardware", tc.hw)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("create: %v", err)
				}
				if _, _, err := run(t, home, "destroy", name); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("create: %v, want %q", err, tc.want)
			}
		})
	}
}

// TestRemoteToken: the token in --home's file goes only to a server on
// this host; another server needs --token or VMFEST_TOKEN, over https;
// no token ever goes to a non-loopback server over plain http.
func TestRemoteToken(t *testing.T) {
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, "token"), []byte("file-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		server, flag, env string
		want, err         string
	}{
		{server: "unix:///run/vmfest.sock", want: ""},
		{server: "http://127.0.0.1:18083", want: "file-token-0123456789"},
		{server: "http://127.0.0.53", want: "file-token-0123456789"},
		{server: "https://[::1]:18083", want: "file-token-0123456789"},
		{server: "http://localhost:18083", want: "file-token-0123456789"},
		{server: "http://[::ffff:127.0.0.1]:18083", want: "file-token-0123456789"},
		{server: "http://127.0.0.1:18083", flag: "flag-token", want: "flag-token"},
		{server: "http://127.0.0.1:18083", env: "env-token", want: "env-token"},
		{server: "https://192.0.2.1:18083", err: "give --token or VMFEST_TOKEN"},
		{server: "https://vmfest.example.com", err: "only for a server on this host"},
		{server: "https://192.0.2.1:18083", flag: "flag-token", want: "flag-token"},
		{server: "https://192.0.2.1:18083", env: "env-token", want: "env-token"},
		{server: "http://192.0.2.1:18083", err: "plain http"},
		{server: "http://192.0.2.1:18083", flag: "flag-token", err: "plain http"},
		{server: "http://vmfest.example.com", env: "env-token", err: "use https://"},
		{server: "http://0.0.0.0:18083", flag: "flag-token", err: "plain http"},
	} {
		t.Run(tc.server+" "+tc.flag+tc.env, func(t *testing.T) {
			t.Setenv("VMFEST_TOKEN", tc.env)
			a := &app{home: home, remote: tc.server, token: tc.flag}
			got, err := a.remoteToken()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("token %q, err %v; want an error saying %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("token %q, err %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestCLISendsFileTokenToLoopback: a CLI command against a server on a
// loopback address sends the token from --home's file.
func TestCLISendsFileTokenToLoopback(t *testing.T) {
	t.Setenv("VMFEST_TOKEN", "")
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, "token"), []byte("file-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Authorization"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("[]\n"))
	}))
	defer ts.Close()
	if _, _, err := run(t, home, "--server", ts.URL, "list"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) == 0 || got[0] != "Bearer file-token-0123456789" {
		t.Fatalf("Authorization headers %q", got)
	}
}

// startServe runs `vmfest serve` with args on a Unix socket in home until
// the test ends, and returns the --server flags that reach it.
func startServe(t *testing.T, home string, args ...string) []string {
	t.Helper()
	sock := filepath.Join(home, "vmfest.sock")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	var serveErr bytes.Buffer
	go func() {
		cmd := newRootCommand(&bytes.Buffer{}, &serveErr)
		cmd.SetArgs(append([]string{"--home", home, "serve", "--unix", sock}, args...))
		served <- cmd.ExecuteContext(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return []string{"--server", "unix://" + sock}
		}
		select {
		case err := <-served:
			served <- err
			t.Fatalf("serve ended: %v\n%s", err, serveErr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("serve did not listen")
		}
	}
}

// TestServePolicyFlags: serve's --nat-allow and --nat-low-ports reach the
// served machines' validation; bad values of serve's policy flags are
// refused before anything listens.
func TestServePolicyFlags(t *testing.T) {
	t.Setenv(envNATAllow, "")
	t.Setenv(envNATLowPorts, "")
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	hw := filepath.Join(home, "wild.yaml")
	os.WriteFile(hw, []byte("memory-size: 128\nnetwork:\n  - attachment-type: nat\n    nat-rules: [{name: web, host-ip: 0.0.0.0, host-port: 80, guest-port: 80}]\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nat-allow", "everywhere"}, `--nat-allow "everywhere"`},
		{[]string{"--fetch-allow", "10.0.0.0/33"}, `--fetch-allow "10.0.0.0/33"`},
		{[]string{"--max-setups", "0"}, "--max-setups 0"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, _, err := run(t, home, append([]string{"serve", "--unix", filepath.Join(home, "x.sock")}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve: %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(home, "x.sock")); err == nil {
				t.Fatal("serve listened")
			}
		})
	}
	remote := startServe(t, home, "--allow-path", home, "--nat-allow", "0.0.0.0/0", "--nat-low-ports")
	if _, _, err := run(t, home, append(remote, "create", "wild", "--image", disk, "--hardware", hw)...); err != nil {
		t.Fatalf("create through a server allowing 0.0.0.0 and port 80: %v", err)
	}
	// The same spec without the server: the environment's default policy.
	if _, _, err := run(t, home, "create", "wild2", "--image", disk, "--hardware", hw); err == nil || !strings.Contains(err.Error(), "host-ip: 0.0.0.0") {
		t.Fatalf("create without the server: %v", err)
	}
}

// TestServeUnixRefusesFile: serve --unix at a regular file fails and
// leaves the file.
func TestServeUnixRefusesFile(t *testing.T) {
	home := t.TempDir()
	path := filepath.Join(home, "notes.txt")
	os.WriteFile(path, []byte("keep me"), 0o644)
	if _, _, err := run(t, home, "serve", "--unix", path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("serve: %v", err)
	}
	if data, err := os.ReadFile(path); err != nil || string(data) != "keep me" {
		t.Fatalf("the file: %q %v", data, err)
	}
}

// TestParsePrefixes: prefixes come repeated or comma-separated; a bare
// address stands for itself; an IPv4-mapped form is refused.
func TestParsePrefixes(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string // the prefixes joined by spaces, or the error's start
	}{
		{[]string{"10.0.0.0/8, 192.0.2.7", "0.0.0.0/0"}, "10.0.0.0/8 192.0.2.7/32 0.0.0.0/0"},
		{[]string{"10.1.2.3/8"}, "10.0.0.0/8"},
		{[]string{"fd00::/8,::1"}, "fd00::/8 ::1/128"},
		{[]string{""}, ""},
		{[]string{"::ffff:10.0.0.0/104"}, `--x "::ffff:10.0.0.0/104": an IPv4-mapped`},
		{[]string{"10.0.0.0/33"}, `--x "10.0.0.0/33": give an address prefix`},
		{[]string{"fe80::1%eth0"}, `--x "fe80::1%eth0": give an address prefix`},
		{[]string{"example.com"}, `--x "example.com": give an address prefix`},
	} {
		t.Run(strings.Join(tc.in, "|"), func(t *testing.T) {
			ps, err := parsePrefixes("--x", tc.in)
			var got string
			if err != nil {
				got = err.Error()
			} else {
				for i, p := range ps {
					if i > 0 {
						got += " "
					}
					got += p.String()
				}
			}
			if !strings.HasPrefix(got, tc.want) || (err == nil && got != tc.want) {
				t.Fatalf("parsePrefixes(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
