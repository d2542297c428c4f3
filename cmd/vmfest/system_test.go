package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmfest/vmfest/api"
	"github.com/vmfest/vmfest/internal/testutil"
)

// Test users and group: IDs no account on a build machine has, given to
// processes with SysProcAttr.Credential (nothing is added to /etc).
const (
	testGroupGID = 65431
	testAdminGID = 65432
	memberUID    = 65430
	otherUID     = 65429
	member2UID   = 65428
	adminUID     = 65427
)

// unitExecStart returns the arguments of packaging/deb/vmfest.service's
// ExecStart, its program replaced by exe.
func unitExecStart(t *testing.T, exe string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "packaging", "deb", "vmfest.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "ExecStart="); ok {
			args := strings.Fields(rest)
			if len(args) < 2 || args[0] != "/usr/bin/vmfest" {
				t.Fatalf("ExecStart=%s: want /usr/bin/vmfest and its arguments", rest)
			}
			return append([]string{exe}, args[1:]...)
		}
	}
	t.Fatal("vmfest.service has no ExecStart")
	return nil
}

// systemEnv is a system instance started as the unit starts it, with its
// state, socket and group moved into a temporary directory.
type systemEnv struct {
	dir, exe, sock, images string
	args                   []string // the server's command line
	stop                   func()   // stops the running server (SIGTERM)
}

func startSystem(t *testing.T) *systemEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test runs the CLI as other users")
	}
	// t.TempDir's parent is 0700: the other users need to reach into it.
	dir, err := os.MkdirTemp("", "vmfest-system")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	state := filepath.Join(dir, "state")
	t.Cleanup(func() { testutil.KillMachines(state) }) // after the server stops
	e := &systemEnv{dir: dir, exe: filepath.Join(dir, "vmfest"), sock: filepath.Join(dir, "run", "vmfest.sock"), images: filepath.Join(dir, "images")}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyFile(t, self, e.exe, 0o755)
	for _, d := range []string{dir, e.images} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.args = append(unitExecStart(t, e.exe), "--home", state, "--unix", e.sock,
		"--socket-group", strconv.Itoa(testGroupGID), "--admin-group", strconv.Itoa(testAdminGID), "--allow-path", e.images)
	e.serve(t)
	t.Cleanup(func() { e.stop() })
	return e
}

// serve starts the server and waits until its socket answers; e.stop
// stops it as systemd stops the unit (SIGTERM to the server alone:
// KillMode=process) and reports how it ended.
func (e *systemEnv) serve(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, e.args[0], e.args[1:]...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "VMFEST_TEST_CLI=1", "HOME=" + e.dir}
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		// Wait gives the context's error for a clean exit after Cancel.
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("serve: %v\n%s", err, log.String())
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", e.sock)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve ended: %v\n%s", err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			e.stop()
			t.Fatalf("no socket at %s after 30 s: %v\n%s", e.sock, err, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, err := os.Stat(e.sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 || st.Sys().(*syscall.Stat_t).Gid != testGroupGID || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("socket %v uid %d gid %d, want 0660 root:%d", st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid, st.Sys().(*syscall.Stat_t).Gid, testGroupGID)
	}
}

func copyFile(t *testing.T, from, to string, perm os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// runAs runs the CLI as uid (its group: itself; groups: its supplementary
// groups), with no --home, --server or VMFEST_* of its own: it finds the
// system instance by itself.
func (e *systemEnv) runAs(t *testing.T, uid uint32, groups []uint32, args ...string) (string, string, error) {
	t.Helper()
	home := filepath.Join(e.dir, "home-"+strconv.Itoa(int(uid)))
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, int(uid), int(uid)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.exe, args...)
	cmd.Dir = home
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "VMFEST_TEST_CLI=1", "HOME=" + home, systemSocketEnv + "=" + e.sock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: groups}}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

// TestSystemInstance: the daemon started as vmfest.service starts it
// serves members of its group, who find it without any flag, create and
// list machines, which they own: another member cannot change them, the
// admin group can; a user outside the group is told how to get access.
func TestSystemInstance(t *testing.T) {
	e := startSystem(t)
	// The member's own disk (a mutable image: the machine writes it).
	disk := testutil.BlankDisk(t, filepath.Join(e.images, "base.raw"), 0o600)
	if err := os.Chown(disk, memberUID, memberUID); err != nil {
		t.Fatal(err)
	}
	member := []uint32{testGroupGID}

	out, errOut, err := e.runAs(t, memberUID, member, "-v", "create", "m1", "--image", disk)
	if err != nil || !strings.Contains(out, "created m1") {
		t.Fatalf("member create: %q %q %v", out, errOut, err)
	}
	if n := strings.Count(errOut, "using the system vmfest server at unix://"+e.sock); n != 1 {
		t.Errorf("-v said it uses the system server %d times, want once:\n%s", n, errOut)
	}
	out, errOut, err = e.runAs(t, memberUID, member, "list")
	if err != nil || !strings.Contains(out, "m1") || !strings.Contains(out, "powered-off") {
		t.Fatalf("member list: %q %q %v", out, errOut, err)
	}
	if lines := strings.Split(out, "\n"); !strings.HasSuffix(strings.TrimSpace(lines[0]), "OWNER") || !strings.HasSuffix(strings.TrimSpace(lines[1]), strconv.Itoa(memberUID)) {
		t.Errorf("list shows no owner:\n%s", out)
	}
	out, _, err = e.runAs(t, memberUID, member, "version")
	if err != nil || !strings.Contains(out, "server: unix://"+e.sock+" (the system instance)") {
		t.Fatalf("member version: %q %v", out, err)
	}

	// Files are used with the caller's rights: member2 cannot take the
	// member's disk (nor the admin's, readable but not writable), even
	// inside --allow-path.
	rootDisk := testutil.BlankDisk(t, filepath.Join(e.images, "root.raw"), 0o644)
	for _, f := range []string{disk, rootDisk} {
		_, errOut, err := e.runAs(t, member2UID, member, "create", "m9", "--image", f)
		if err == nil || !strings.Contains(errOut, "cannot read and write it") {
			t.Fatalf("member2 creates on %s: %q %v, want refused", f, errOut, err)
		}
	}
	_, errOut, err = e.runAs(t, otherUID, nil, "list")
	if err == nil || !strings.Contains(errOut, "join the group vmfest") || !strings.Contains(errOut, "--home") {
		t.Fatalf("non-member list: %q %v, want how to get access", errOut, err)
	}
	out, _, err = e.runAs(t, otherUID, nil, "version")
	if err != nil || !strings.Contains(out, "server: none: cannot use the system vmfest server") {
		t.Fatalf("non-member version: %q %v", out, err)
	}
	// Owners: another member reads m1 but cannot change it or take it;
	// the admin group can.
	if out, errOut, err := e.runAs(t, member2UID, member, "show", "m1"); err != nil {
		t.Fatalf("member2 show m1: %q %q %v", out, errOut, err)
	}
	for _, args := range [][]string{{"destroy", "m1"}, {"start", "m1"}, {"label", "m1", "x=1"}} {
		_, errOut, err := e.runAs(t, member2UID, member, args...)
		if err == nil || !strings.Contains(errOut, "machine m1 belongs to uid "+strconv.Itoa(memberUID)+": only its owner, root or") {
			t.Fatalf("member2 %v: %q %v, want refused as not the owner", args, errOut, err)
		}
	}
	if _, errOut, err := e.runAs(t, member2UID, member, "network", "remove", "vmfestnet0"); err == nil || !strings.Contains(errOut, "only root and the admin group may remove the shared") {
		t.Fatalf("member2 removes a network: %q %v, want refused", errOut, err)
	}
	if _, errOut, err := e.runAs(t, memberUID, member, "label", "m1", api.OwnerLabel+"="+strconv.Itoa(member2UID)); err == nil || !strings.Contains(errOut, "only root and the admin group") {
		t.Fatalf("member gives m1 away: %q %v, want refused", errOut, err)
	}
	if out, errOut, err := e.runAs(t, memberUID, member, "label", "m1", "team=a"); err != nil {
		t.Fatalf("owner labels m1: %q %q %v", out, errOut, err)
	}
	if out, errOut, err := e.runAs(t, adminUID, []uint32{testGroupGID, testAdminGID}, "destroy", "m1"); err != nil {
		t.Fatalf("admin destroys m1: %q %q %v", out, errOut, err)
	}
	// A home of their own still works.
	if out, errOut, err := e.runAs(t, otherUID, nil, "--home", filepath.Join(e.dir, "home-"+strconv.Itoa(otherUID), "vmfest"), "list"); err != nil {
		t.Fatalf("non-member list --home: %q %q %v", out, errOut, err)
	}
	// A member may name only files the server allows.
	own := filepath.Join(e.dir, "home-"+strconv.Itoa(memberUID), "own.raw")
	testutil.BlankDisk(t, own, 0o444)
	if _, errOut, err := e.runAs(t, memberUID, member, "create", "m2", "--image", own); err == nil || !strings.Contains(errOut, "--allow-path") {
		t.Fatalf("member create from outside --allow-path: %q %v, want refused", errOut, err)
	}
}
