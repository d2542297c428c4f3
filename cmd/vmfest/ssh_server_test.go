package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// TestCLISSHThroughServer: `vmfest --server URL create` from a client with
// its own --home gives the machine the client's key, and `vmfest --server
// URL ssh NAME -- CMD` runs CMD through the server's tunnel (the machine is
// on NAT only: its SSH endpoint is the server's loopback forward) with that
// key alone (the image's password is dropped). A third client, whose key
// the machine lacks, is refused with what it needs.
func TestCLISSHThroughServer(t *testing.T) {
	meta := tinyImage(t)
	server := machineHome(t)
	client, stranger := t.TempDir(), t.TempDir()

	// The tiny image without its password: only keys log in.
	data, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	im, err := spec.ParseImage(data)
	if err != nil {
		t.Fatal(err)
	}
	im.Password = ""
	if !filepath.IsAbs(im.Location) {
		im.Location = filepath.Join(filepath.Dir(meta), im.Location)
	}
	data, _ = json.Marshal(im)
	keyOnly := filepath.Join(t.TempDir(), "tiny-key-only.json")
	if err := os.WriteFile(keyOnly, data, 0o644); err != nil {
		t.Fatal(err)
	}
	hw := filepath.Join(t.TempDir(), "nat.yaml")
	if err := os.WriteFile(hw, []byte("memory-size: 256\ncpu-count: 1\nnetwork:\n  - attachment-type: nat\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	remote := startServe(t, server, "--allow-path", filepath.Dir(im.Location))
	on := func(args ...string) []string { return append(append([]string{}, remote...), args...) }

	if code, _, errOut := runCLI(t, client, on("create", "vm", "--image", keyOnly, "--hardware", hw)...); code != 0 {
		t.Fatalf("create through the server: %s", errOut)
	}
	t.Cleanup(func() { runCLI(t, server, "destroy", "--force", "vm") })
	// The server's record holds the client's key (and no other given key).
	_, pub, err := vmfest.LoadSSHKey(client)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := os.ReadFile(filepath.Join(server, store.MachinesDir, "vm", store.MachineFile))
	if err != nil || strings.Count(string(rec), strings.Fields(pub)[1]) != 1 {
		t.Fatalf("the machine's record does not hold the client's key once (%v):\n%s", err, rec)
	}
	if code, out, errOut := runCLI(t, client, on("start", "vm", "--wait", "90s")...); code != 0 {
		t.Fatalf("start: %s%s", out, errOut)
	}
	for _, c := range []cliCase{
		{args: on("ssh", "vm", "--wait", "60s", "--", "uname", "-s"), stdout: "Linux\n"},
		{args: on("ssh", "vm", "--", "sh", "-c", "echo out; echo err >&2; exit 7"), code: 7, stdout: "out\n", stderr: "err\n"},
	} {
		c.check(t, client)
	}
	// Ansible through the inventory the client prints: a ProxyCommand of
	// vmfest ssh-proxy through the server (the test binary stands in for
	// vmfest: TestMain), with the client's key.
	code, host, errOut := runCLI(t, client, on("inventory", "--host", "vm")...)
	if code != 0 || !strings.Contains(host, "ssh-proxy 'vm'") || !strings.Contains(host, filepath.Join(client, "ssh", "id_ed25519")) {
		t.Fatalf("inventory --host vm through the server: %s%s", host, errOut)
	}
	if ansible, err := exec.LookPath("ansible"); err == nil {
		_, list, _ := runCLI(t, client, on("inventory", "--list")...)
		dir := t.TempDir()
		script := filepath.Join(dir, "inventory")
		listFile := filepath.Join(dir, "list.json")
		if err := os.WriteFile(listFile, []byte(list), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(script, []byte("#!/bin/sh\nif [ \"$1\" = --list ]; then cat "+listFile+"; else echo '{}'; fi\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(ansible, "-i", script, "all", "-m", "raw", "-a", "hostname")
		cmd.Env = append(os.Environ(), "VMFEST_TEST_CLI=1", "ANSIBLE_LOCAL_TEMP="+dir, "ANSIBLE_HOME="+dir, "ANSIBLE_TIMEOUT=60")
		got, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(got), "vm | CHANGED") {
			t.Fatalf("ansible through vmfest ssh-proxy: %v\n%s", err, got)
		}
	}
	refused := cliCase{args: on("ssh", "vm", "--wait", "60s", "--", "true"), code: 1,
		stderr: fmt.Sprintf("ssh to machine vm through vmfest server %s as root: the guest refused the login (tried this client's vmfest key, which a machine created through the server by someone else has only if its creator gave it with --ssh-key)", remote[1])}
	refused.check(t, stranger)
}

// TestCreateOwnKey: through a --server whose state directory is another
// one, create gives the client's own key once (also when --ssh-key names
// it); through the socket in the client's own --home, whose server gives
// the guest that key already, it adds nothing.
func TestCreateOwnKey(t *testing.T) {
	home := t.TempDir()
	_, pub, err := vmfest.LoadSSHKey(home)
	if err != nil {
		t.Fatal(err)
	}
	other := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOtherKeyOtherKeyOtherKeyOtherKey00 other"
	for _, c := range []struct {
		name, server string
		given, want  []string
	}{
		{"local", "", []string{other}, []string{other}},
		{"own socket", "unix://" + filepath.Join(home, "vmfest.sock"), []string{other}, []string{other}},
		{"another server", "unix:///elsewhere/vmfest.sock", []string{other}, []string{other, pub}},
		{"tcp", "http://127.0.0.1:18083", nil, []string{pub}},
		{"given already", "https://host:18083", []string{"ssh-ed25519 " + strings.Fields(pub)[1] + " laptop"}, []string{"ssh-ed25519 " + strings.Fields(pub)[1] + " laptop"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := &app{home: home, remote: c.server}
			got, err := a.withOwnKey(append([]string(nil), c.given...))
			if err != nil || strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Fatalf("withOwnKey(%q) = %q, %v; want %q", c.given, got, err, c.want)
			}
		})
	}
}
