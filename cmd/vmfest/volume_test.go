package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/internal/testutil"
)

// TestCLIVolumes: volumes and slots from the command line, and a one-line
// error naming the field for each kind of bad input, changing nothing.
func TestCLIVolumes(t *testing.T) {
	home := t.TempDir()
	dir := t.TempDir()
	disk := testutil.BlankDisk(t, filepath.Join(dir, "base.raw"), 0o444)
	notISO := testutil.BlankDisk(t, filepath.Join(dir, "not.iso"), 0o444)
	iso := filepath.Join(dir, "tools.iso")
	b := make([]byte, 34*1024)
	copy(b[32769:], "CD001")
	if err := os.WriteFile(iso, b, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { runCLI(t, home, "destroy", "--force", "a", "b") })
	for _, c := range []cliCase{
		{args: []string{"volume", "create", "data", "--size", "2G"}, stdout: "created volume data (2G)"},
		{args: []string{"volume", "create", "data", "--size", "2G"}, code: 1, stderr: `volume "data"`},
		{args: []string{"volume", "create", "x", "--size", "12X"}, code: 1, stderr: `--size 12X: "12X" is not a size`},
		{args: []string{"volume", "create", "x"}, code: 1, stderr: "--size is required"},
		{args: []string{"create", "a", "--image", disk, "--volume", "data", "--iso", iso}, stdout: "created a"},
		{args: []string{"show", "a"}, stdout: "volume data at VirtIO Controller:1\n"},
		{args: []string{"show", "a"}, stdout: iso + " at IDE Controller:2\n"},
		{args: []string{"volume", "list"}, stdout: "data  2G"},
		{args: []string{"volume", "show", "data"}, stdout: "to a at VirtIO Controller:1"},
		{args: []string{"create", "b", "--image", disk, "--volume", "data"}, code: 1, stderr: `in use by machine "a"`},
		{args: []string{"volume", "rm", "data"}, code: 1, stderr: `attached to machine "a"`},
		{args: []string{"attach", "a"}, code: 1, stderr: "attach needs one of a VOLUME, --iso FILE or --disk FILE"},
		{args: []string{"attach", "a", "data", "--iso", iso}, code: 1, stderr: "attach needs one of"},
		{args: []string{"attach", "a", "--iso", iso, "--slot", "IDE Controller"}, code: 1, stderr: "write CONTROLLER:N"},
		{args: []string{"attach", "a", "--iso", iso, "--slot", "SATA:0"}, code: 1, stderr: `"SATA" names no controller`},
		{args: []string{"attach", "a", "--iso", iso, "--slot", "IDE Controller:9"}, code: 1, stderr: "has slots 0-3"},
		{args: []string{"attach", "a", "--iso", notISO}, code: 1, stderr: "not an ISO 9660 or UDF image"},
		{args: []string{"attach", "ghost", "data"}, code: 1, stderr: `machine "ghost"`},
		{args: []string{"detach", "a", "--slot", "IDE Controller:2"}, stdout: "detached a: what it held at IDE Controller:2"},
		{args: []string{"detach", "a", "data"}, stdout: "detached a: volume data at VirtIO Controller:1"},
		{args: []string{"detach", "a", "data"}, code: 1, stderr: "volume data is not attached"},
		{args: []string{"attach", "a", "data", "--slot", "IDE Controller:3"}, stdout: "attached a: volume data at IDE Controller:3"},
		{args: []string{"destroy", "a"}, stdout: "destroyed a"},
		{args: []string{"volume", "rm", "data"}, stdout: "removed volume data"},
	} {
		c.check(t, home)
	}
	// The user's ISO and the base image are untouched.
	for _, p := range []string{iso, disk} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	code, out, _ := runCLI(t, home, "volume", "list")
	if code != 0 || strings.Contains(out, "data") {
		t.Fatalf("volume list after rm: %d %q", code, out)
	}
}
