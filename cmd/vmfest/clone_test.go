package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/internal/testutil"
)

// vmfest clone of a powered-off machine (no QEMU runs): its words, its
// JSON, and its refusals.
func TestCLIClone(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	if _, _, err := run(t, home, "create", "vm1", "--image", disk, "--label", "role=web"); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, home, "clone", "vm1", "vm2")
	if err != nil || !strings.HasPrefix(out, "cloned vm1 as vm2 (powered-off) in ") {
		t.Fatalf("clone: %q %v", out, err)
	}
	out, _, err = run(t, home, "clone", "vm1", "vm3", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Name     string            `json:"name"`
		State    string            `json:"state"`
		Labels   map[string]string `json:"labels"`
		GenID    string            `json:"generation-id"`
		Hardware struct {
			Network []struct {
				MAC string `json:"mac-address"`
			} `json:"network"`
		} `json:"hardware-spec"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("clone --json: %v\n%s", err, out)
	}
	if info.Name != "vm3" || info.State != "powered-off" || info.Labels["role"] != "web" || info.GenID == "" {
		t.Fatalf("clone --json = %+v", info)
	}
	src, _, err := run(t, home, "show", "vm1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Hardware.Network) > 0 && strings.Contains(src, info.Hardware.Network[0].MAC) {
		t.Fatalf("the clone has its source's MAC %s", info.Hardware.Network[0].MAC)
	}
	for _, args := range [][]string{{"clone", "vm1", "vm2"}, {"clone", "nope", "vm4"}, {"clone", "vm1"}} {
		if _, _, err := run(t, home, args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
