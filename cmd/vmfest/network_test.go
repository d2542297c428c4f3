package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/internal/testutil"
)

// TestCLINetworks drives vmfest network, list/show addresses, --ssh-key
// and the errors of ip and ssh, without booting anything.
func TestCLINetworks(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	key := filepath.Join(home, "me.pub")
	os.WriteFile(key, []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB6hQm0Wb5mA9J5u3QmCkq4s1n6c0pT8W7n0Cq4X9a1b me@laptop\n"), 0o644)
	notKey := filepath.Join(home, "id_ed25519")
	os.WriteFile(notKey, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n"), 0o600)

	if _, _, err := run(t, home, "create", "vm0", "--image", disk, "--ssh-key", notKey); err == nil || !strings.Contains(err.Error(), "not an OpenSSH public key") {
		t.Fatalf("create with a private key as --ssh-key: %v", err)
	}
	if _, _, err := run(t, home, "create", "vm1", "--image", disk, "--ssh-key", key); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, home, "list")
	if err != nil || !strings.Contains(out, "ADDRESSES") || !strings.Contains(out, "192.168.56.2") {
		t.Fatalf("list:\n%s %v", out, err)
	}
	out, _, err = run(t, home, "show", "vm1")
	if err != nil || !strings.Contains(out, "host-only virtio") || !strings.Contains(out, "on vmfestnet0 ip 192.168.56.2") {
		t.Fatalf("show:\n%s %v", out, err)
	}
	if _, _, err := run(t, home, "network", "create", "lab", "--kind", "internal"); err != nil {
		t.Fatal(err)
	}
	out, _, err = run(t, home, "network", "create", "hon1", "--subnet", "10.231.0.0/24")
	if err != nil || !strings.Contains(out, "created host-only network hon1 on 10.231.0.0/24 (host 10.231.0.1)") {
		t.Fatalf("network create: %q %v", out, err)
	}
	out, _, err = run(t, home, "network", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var nets []map[string]any
	if err := json.Unmarshal([]byte(out), &nets); err != nil || len(nets) != 3 {
		t.Fatalf("network list --json: %v\n%s", err, out)
	}
	if nets[2]["name"] != "vmfestnet0" || nets[2]["subnet"] != "192.168.56.0/24" || nets[2]["machines"].([]any)[0] != "vm1" {
		t.Fatalf("vmfestnet0 = %v", nets[2])
	}
	if _, _, err := run(t, home, "network", "rm", "vmfestnet0"); err == nil || !strings.Contains(err.Error(), "vm1") {
		t.Fatalf("rm of a network in use: %v", err)
	}
	if _, _, err := run(t, home, "network", "rm", "lab", "hon1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, home, "ip", "vm1"); err == nil || !strings.Contains(err.Error(), "powered-off") {
		t.Fatalf("ip of a powered-off machine: %v", err)
	}
	if _, _, err := run(t, home, "ip", "vm1", "--slot", "5"); err == nil || !strings.Contains(err.Error(), "no NIC in slot 5") {
		t.Fatalf("ip of a missing slot: %v", err)
	}
	if _, _, err := run(t, home, "ssh", "vm1", "--", "true"); err == nil || !strings.Contains(err.Error(), "powered-off") {
		t.Fatalf("ssh to a powered-off machine: %v", err)
	}
	if _, err := os.Stat(filepath.Join(home, "ssh", "id_ed25519")); err != nil {
		t.Fatalf("vmfest ssh made no key: %v", err)
	}
	if _, _, err := run(t, home, "destroy", "vm1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, home, "network", "rm", "vmfestnet0"); err != nil {
		t.Fatal(err)
	}
}
