package main

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/netnstest"
)

// TestSystemMemberBoots: in a network namespace of its own, the daemon
// started as vmfest.service starts it serves a member of group vmfest as
// it serves root: the member installs the tiny image from a file they can
// read, creates a machine on the default micro hardware (host-only and
// NAT), starts it, gets its address, runs a command over ssh and reads its
// console. Another member can do none of that to it, and the member cannot
// attach a file they cannot read nor another member's volume. Then the daemon is stopped as systemd
// stops it on an upgrade and a new one started: the machine kept running
// (the same QEMU) and the new daemon serves it.
func TestSystemMemberBoots(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	meta := tinyImage(t)
	e := startSystem(t)
	member, member2 := []uint32{testGroupGID}, []uint32{testGroupGID}
	run := func(uid uint32, groups []uint32, args ...string) string {
		t.Helper()
		out, errOut, err := e.runAs(t, uid, groups, args...)
		if err != nil {
			t.Fatalf("uid %d: vmfest %s: %v\n%s%s", uid, strings.Join(args, " "), err, out, errOut)
		}
		return out
	}

	// The published image (compressed disk, .sha256, .meta) where the
	// service allows paths, readable by everyone.
	gz := strings.TrimSuffix(meta, ".meta") + ".qcow2.gz"
	for _, f := range []string{gz, strings.TrimSuffix(meta, ".meta") + ".sha256", meta} {
		if _, err := os.Stat(f); err != nil {
			t.Skipf("no published tiny image (make image): %v", err)
		}
		copyFile(t, f, filepath.Join(e.images, filepath.Base(f)), 0o644)
	}
	run(memberUID, member, "model", "add", filepath.Join(e.images, filepath.Base(gz)), "--id", "tiny")
	run(memberUID, member, "create", "m1", "--image", "tiny")
	t.Cleanup(func() { e.runAs(t, 0, nil, "destroy", "--force", "m1") })
	if out := run(memberUID, member, "show", "m1"); !strings.Contains(out, "micro") {
		t.Errorf("m1 is not on the default micro hardware:\n%s", out)
	}
	run(memberUID, member, "start", "m1", "--wait", "120s")

	addr := strings.TrimSpace(run(memberUID, member, "ip", "m1", "--wait", "60s"))
	if ip, err := netip.ParseAddr(addr); err != nil || !ip.Is4() || !ip.IsPrivate() {
		t.Fatalf("ip m1 = %q (%v), want the host-only network's address", addr, err)
	}
	if out := run(memberUID, member, "ssh", "m1", "--wait", "60s", "--", "uname", "-s"); out != "Linux\n" {
		t.Fatalf("ssh m1 -- uname -s = %q", out)
	}
	// The serial console: the guest's init names the machine, then getty
	// prompts (waited for: the prompt may follow the agent's answer).
	for deadline := time.Now().Add(30 * time.Second); ; {
		out := run(memberUID, member, "console", "m1")
		if strings.Contains(out, "hostname m1") && strings.Contains(out, "m1 login:") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("console m1 shows no login prompt of m1 after 30 s:\n%.2000s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Another member: refused, naming the owner.
	for _, args := range [][]string{{"stop", "m1"}, {"destroy", "--force", "m1"}, {"console", "m1"}, {"ssh", "m1", "--", "true"}} {
		_, errOut, err := e.runAs(t, member2UID, member2, args...)
		if err == nil || !strings.Contains(errOut, "machine m1 belongs to uid "+strconv.Itoa(memberUID)) {
			t.Errorf("member2 %v: %q %v, want refused as not the owner", args, errOut, err)
		}
	}
	// A file the member cannot read is not attached, though it is inside
	// --allow-path and the daemon (root) could read it.
	secret := filepath.Join(e.images, "secret.iso")
	if err := os.WriteFile(secret, []byte("not theirs"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := e.runAs(t, memberUID, member, "attach", "m1", "--iso", secret); err == nil || !strings.Contains(errOut, secret) || !strings.Contains(errOut, "uid "+strconv.Itoa(memberUID)) {
		t.Fatalf("member attaches a file they cannot read: %q %v, want refused naming the file and the uid", errOut, err)
	}

	// Nor another member's volume.
	run(member2UID, member2, "volume", "create", "v2", "--size", "64M")
	if out := run(memberUID, member, "volume", "list"); !strings.Contains(out, "OWNER") {
		t.Errorf("volume list shows no owner:\n%s", out)
	}
	if _, errOut, err := e.runAs(t, memberUID, member, "attach", "m1", "v2"); err == nil || !strings.Contains(errOut, "volume v2 belongs to uid "+strconv.Itoa(member2UID)) {
		t.Fatalf("member attaches member2's volume: %q %v, want refused naming its owner", errOut, err)
	}
	run(member2UID, member2, "volume", "rm", "v2")

	// An upgrade: the daemon stops (SIGTERM to it alone), the machine
	// keeps running, a new daemon adopts it.
	pid := qemuPID(t, run(memberUID, member, "show", "m1", "--json"))
	e.stop()
	if !alive(pid) {
		t.Fatalf("QEMU (pid %d) ended with the daemon", pid)
	}
	e.serve(t)
	if again := qemuPID(t, run(memberUID, member, "show", "m1", "--json")); again != pid {
		t.Fatalf("after the restart m1 runs as pid %d, was %d", again, pid)
	}
	if got := strings.TrimSpace(run(memberUID, member, "ip", "m1")); got != addr {
		t.Errorf("after the restart ip m1 = %q, was %q", got, addr)
	}
	if out := run(memberUID, member, "ssh", "m1", "--", "cat", "/proc/uptime"); out == "" {
		t.Error("ssh after the restart printed nothing")
	}
	run(memberUID, member, "destroy", "--force", "m1")
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU (pid %d) still runs 30 s after destroy", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// qemuPID reads the pid of a running machine from show --json.
func qemuPID(t *testing.T, showJSON string) int {
	t.Helper()
	var info struct {
		State string `json:"state"`
		PID   int    `json:"pid"`
	}
	if err := json.Unmarshal([]byte(showJSON), &info); err != nil || info.State != "running" || info.PID <= 0 {
		t.Fatalf("show --json: %v: %s", err, showJSON)
	}
	return info.PID
}

// alive reports whether process pid runs: it exists and is not a zombie
// (in the test's PID namespace the test binary is init, and does not reap
// the QEMU processes a stopped daemon left to it).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	_, rest, ok := strings.Cut(string(stat), ") ")
	return ok && !strings.HasPrefix(rest, "Z")
}
