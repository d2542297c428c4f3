package vmfest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api"
)

// serveTCP runs the HTTP API over l on a loopback TCP port with l's token,
// as `vmfest serve --listen 127.0.0.1:PORT` does, and returns the server's
// URL and token. allow are the directories a caller may name images in.
// Cleanup stops the server.
func serveTCP(t *testing.T, l *vmfest.Local, allow ...string) (url, token string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := api.New(ctx, l, api.Config{Home: l.Home(), AllowPaths: allow, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	tokenFile := filepath.Join(l.Home(), api.TokenFile)
	if token, err = api.LoadToken(tokenFile); err != nil {
		cancel()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, api.Listen{TCP: addr, TokenFile: tokenFile}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return "http://" + addr, token
		}
		select {
		case err := <-served:
			served <- err
			t.Fatalf("serve ended: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not listen on %s", addr)
		}
	}
}

// TestSSHThroughServer: a client with its own state directory creates the
// tiny guest through `vmfest serve` on TCP with a token, on NAT only (its
// SSH endpoint is the server's loopback forward), giving its own key as
// `vmfest --server create` does, and runs a command over SSH through the
// server's tunnel: the output and exit status come back. The image's
// password is dropped, so only the client's key can log in; a client with
// another key is refused.
func TestSSHThroughServer(t *testing.T) {
	image := vmfest.TinyImage(t)
	image.Password = ""
	l := vmfest.NewTestServer(t)
	url, token := serveTCP(t, l, filepath.Dir(image.Location))
	r, err := vmfest.Connect(url, vmfest.WithToken(token))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	client := t.TempDir() // the client's $VMFEST_HOME, not the server's
	signer, pub, err := vmfest.LoadSSHKey(client)
	if err != nil {
		t.Fatal(err)
	}
	img := vmfest.ImageSpec(image)
	img.SSHKeys = []string{pub}
	m, err := r.Instance(ctx, "tunnelled", img, natOnly())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Destroy(context.Background()) })
	if _, ok := m.(vmfest.SSHDialer); !ok {
		t.Fatal("a Remote's machine is no SSHDialer")
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		log, _ := m.ConsoleLog(ctx)
		t.Fatalf("wait ready: %v\nconsole:\n%s", err, log)
	}

	begun := time.Now()
	var out, errOut bytes.Buffer
	code, err := vmfest.SSH(ctx, m, signer, vmfest.SSHOptions{
		Command:        []string{"uname -s; hostname; echo to-stderr >&2; exit 3"},
		Stdout:         &out,
		Stderr:         &errOut,
		ConnectTimeout: 2 * time.Minute,
	})
	if err != nil || code != 3 || out.String() != "Linux\ntunnelled\n" || errOut.String() != "to-stderr\n" {
		log, _ := m.ConsoleLog(ctx)
		t.Fatalf("ssh through the server: exit %d, %v\nstdout: %q\nstderr: %q\nconsole:\n%s", code, err, out.String(), errOut.String(), log)
	}
	t.Logf("ssh through the server's tunnel: %s", time.Since(begun).Round(time.Millisecond))

	// stdin goes through too, and the session ends with it.
	out.Reset()
	code, err = vmfest.SSH(ctx, m, signer, vmfest.SSHOptions{Command: []string{"wc", "-c"}, Stdin: strings.NewReader(strings.Repeat("y", 100000)), Stdout: &out})
	if err != nil || code != 0 || strings.TrimSpace(out.String()) != "100000" {
		t.Fatalf("ssh with stdin: exit %d, %v, stdout %q", code, err, out.String())
	}

	// What the tunnel costs beside a direct connection to the forward
	// (the server's own key, from the server's side), measured, not
	// asserted.
	local, err := l.FindMachine(ctx, m.Name())
	if err != nil {
		t.Fatal(err)
	}
	serverKey, _, err := l.SSHKey()
	if err != nil {
		t.Fatal(err)
	}
	timed := func(m vmfest.Machine, key ssh.Signer) time.Duration {
		best := time.Hour
		for range 3 {
			begun := time.Now()
			if code, err := vmfest.SSH(ctx, m, key, vmfest.SSHOptions{Command: []string{"true"}}); err != nil || code != 0 {
				t.Fatalf("ssh true: exit %d, %v", code, err)
			}
			best = min(best, time.Since(begun))
		}
		return best
	}
	direct, tunnelled := timed(local, serverKey), timed(m, signer)
	t.Logf("ssh true, best of 3: direct %s, through the server's tunnel %s (%.2fx)", direct.Round(time.Millisecond), tunnelled.Round(time.Millisecond), float64(tunnelled)/float64(direct))

	// The server counted the sessions as tunnels (status 101).
	want := `route="machine-ssh",code="101"`
	for deadline := time.Now().Add(10 * time.Second); ; {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(data), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server's metrics have no %s:\n%s", want, data)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Another client's key is not in the guest: refused at once, saying
	// how the connection went.
	other, _, err := vmfest.LoadSSHKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, err = vmfest.SSH(ctx, m, other, vmfest.SSHOptions{Command: []string{"true"}, ConnectTimeout: time.Minute})
	if err == nil || !strings.Contains(err.Error(), "the guest refused the login") || !strings.Contains(err.Error(), "through vmfest server "+url) {
		t.Fatalf("ssh with a key the guest lacks: %v", err)
	}

	// A machine that does not run is refused at once, as locally.
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	begun = time.Now()
	var se *vmfest.StateError
	if _, err := vmfest.SSH(ctx, m, signer, vmfest.SSHOptions{Command: []string{"true"}, ConnectTimeout: time.Minute}); !errors.As(err, &se) || se.State != vmfest.PoweredOff {
		t.Fatalf("ssh to a powered-off machine: %v", err)
	}
	if took := time.Since(begun); took > 10*time.Second {
		t.Errorf("ssh to a powered-off machine took %s: it should fail at once", took)
	}
}
