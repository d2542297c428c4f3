package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInventoryWithAnsible boots a labelled machine, prints vmfest's
// inventory and has the real ansible (ansible-core, from Debian) run the
// raw module on it through that inventory: it needs no Python in the
// guest.
func TestInventoryWithAnsible(t *testing.T) {
	meta := tinyImage(t)
	ansible, err := exec.LookPath("ansible")
	if err != nil {
		t.Skip("ansible is not installed (make deps installs ansible-core)")
	}
	home := machineHome(t)
	hw := filepath.Join(home, "nat.yaml")
	if err := os.WriteFile(hw, []byte("memory-size: 256\ncpu-count: 1\nnetwork:\n  - attachment-type: nat\n    adapter-type: virtio\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCLI(t, home, "create", "inv1", "--image", meta, "--hardware", hw, "--label", "role=web"); code != 0 {
		t.Fatalf("create: %s", errOut)
	}
	t.Cleanup(func() { runCLI(t, home, "destroy", "--force", "inv1") })
	if code, _, errOut := runCLI(t, home, "start", "inv1", "--wait", "2m"); code != 0 {
		t.Fatalf("start: %s", errOut)
	}
	code, out, errOut := runCLI(t, home, "inventory", "--list")
	if code != 0 {
		t.Fatalf("inventory --list: %s", errOut)
	}
	var inv map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &inv); err != nil || inv["role_web"] == nil || inv["vmfest"] == nil || inv["_meta"] == nil {
		t.Fatalf("inventory --list = %s (%v)", out, err)
	}
	if code, host, _ := runCLI(t, home, "inventory", "--host", "inv1"); code != 0 || !strings.Contains(host, `"ansible_host": "127.0.0.1"`) {
		t.Fatalf("inventory --host inv1 = %s", host)
	}
	// ansible calls an inventory script with --list: this one answers with
	// what vmfest inventory printed.
	dir := t.TempDir()
	list := filepath.Join(dir, "list.json")
	if err := os.WriteFile(list, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "inventory")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nif [ \"$1\" = --list ]; then cat "+list+"; else echo '{}'; fi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ansible, "-i", script, "role_web", "-m", "raw", "-a", "hostname")
	cmd.Env = append(os.Environ(), "ANSIBLE_LOCAL_TEMP="+dir, "ANSIBLE_HOME="+dir, "ANSIBLE_HOST_KEY_CHECKING=False", "ANSIBLE_TIMEOUT=60")
	got, err := cmd.CombinedOutput()
	// The raw module's output comes through a pty: CRLF line ends.
	if err != nil || !strings.Contains(string(got), "inv1 | CHANGED") || !strings.Contains(strings.ReplaceAll(string(got), "\r", ""), ">>\ninv1\n") {
		t.Fatalf("ansible -m raw -a hostname: %v\n%s", err, got)
	}
}
