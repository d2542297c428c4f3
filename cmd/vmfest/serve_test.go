package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/internal/testutil"
)

// TestCLIAgainstServer runs the machine commands through `vmfest serve` on
// a Unix socket with --server, and checks they print what they print
// against the local state directory.
func TestCLIAgainstServer(t *testing.T) {
	home, err := os.MkdirTemp("", "vmfc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	images := filepath.Join(home, "images")
	os.Mkdir(images, 0o755)
	disk := filepath.Join(images, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	remote := startServe(t, home, "--allow-path", images)

	if out, _, err := run(t, home, append(remote, "create", "vm1", "--image", disk, "--memory", "128")...); err != nil || !strings.Contains(out, "created vm1") {
		t.Fatalf("create: %q %v", out, err)
	}
	for _, args := range [][]string{
		{"list", "--json"},
		{"show", "vm1"},
		{"hardware", "list"},
		{"hardware", "show", "small"},
	} {
		lout, _, lerr := run(t, home, args...)
		rout, _, rerr := run(t, home, append(remote, args...)...)
		if lerr != nil || rerr != nil || lout != rout {
			t.Errorf("%v: local and remote differ:\nlocal (%v):\n%s\nremote (%v):\n%s", args, lerr, lout, rerr, rout)
		}
	}
	for _, args := range [][]string{
		{"pause", "vm1"},
		{"show", "nope"},
		{"create", "vm1", "--image", disk},
		{"cp", disk, "vm1:/tmp"},
		{"cp", "--via", "agent", "vm1:/etc/hostname", home},
		{"cp", disk, "nope:/tmp"},
	} {
		_, _, lerr := run(t, home, args...)
		_, _, rerr := run(t, home, append(remote, args...)...)
		if lerr == nil || rerr == nil || lerr.Error() != rerr.Error() {
			t.Errorf("%v: errors differ:\nlocal:  %v\nremote: %v", args, lerr, rerr)
		}
	}
	// Idempotent through the API too: the remote ErrWrongState, then the
	// machine's state, tell "already so" from a refusal.
	for _, args := range [][]string{{"stop", "vm1"}, {"power-down", "vm1"}} {
		out, _, err := run(t, home, append(remote, args...)...)
		if err != nil || out != "vm1 is already powered-off\n" {
			t.Errorf("%v through the server: %q %v", args, out, err)
		}
	}
	// The socket's own user is this host's user: like the CLI without a
	// server, they name any file (a token holder or a group member may
	// not: TestForbiddenPaths, TestSystemInstance).
	outside := filepath.Join(home, "outside.raw")
	testutil.BlankDisk(t, outside, 0o444)
	if out, _, err := run(t, home, append(remote, "create", "vm2", "--image", outside)...); err != nil || !strings.Contains(out, "created vm2") {
		t.Errorf("the socket's user creates from outside --allow-path: %q %v", out, err)
	}
	if _, _, err := run(t, home, append(remote, "destroy", "vm2")...); err != nil {
		t.Fatal(err)
	}
	if out, _, err := run(t, home, append(remote, "destroy", "vm1")...); err != nil || !strings.Contains(out, "destroyed vm1") {
		t.Fatalf("destroy: %q %v", out, err)
	}
	if _, _, err := run(t, home, "--server", "unix://"+filepath.Join(home, "none.sock"), "list"); err == nil || !strings.Contains(err.Error(), "vmfest serve") {
		t.Errorf("no server: %v", err)
	}
	if _, _, err := run(t, home, append(remote, "serve")...); err == nil {
		t.Error("serve --server was accepted")
	}
}
