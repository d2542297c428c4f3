package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/internal/testutil"
)

// run executes the CLI in-process against home and returns its output.
func run(t *testing.T, home string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := execute(context.Background(), append([]string{"--home", home}, args...), &out, &errOut)
	return out.String(), errOut.String(), err
}

func TestCLIMachineCommands(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	spec := filepath.Join(home, "base.meta")
	os.WriteFile(spec, []byte(`{"location": "base.raw", "immutable": true, "os-family": "linux"}`), 0o644)

	if out, _, err := run(t, home, "create", "vm1", "--image", disk); err != nil || !strings.Contains(out, "created vm1") {
		t.Fatalf("create: %q %v", out, err)
	}
	if _, _, err := run(t, home, "instance", "vm2", "--image", spec, "--hardware", "small", "--memory", "256"); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, home, "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	if len(rows) != 2 || rows[0]["name"] != "vm1" || rows[0]["state"] != "powered-off" || rows[0]["image"] != disk || rows[0]["hardware"] != "micro" {
		t.Fatalf("rows = %v", rows)
	}
	if rows[1]["hardware"] != "custom" {
		t.Fatalf("--memory should make custom hardware: %v", rows[1])
	}
	out, _, err = run(t, home, "show", "vm2", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var info map[string]any
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	if info["name"] != "vm2" || info["state"] != "powered-off" || info["hardware-spec"].(map[string]any)["memory-size"].(float64) != 256 {
		t.Fatalf("show = %v", info)
	}
	out, _, err = run(t, home, "list")
	if err != nil || !strings.Contains(out, "NAME") || !strings.Contains(out, "vm1") {
		t.Fatalf("list: %q %v", out, err)
	}
	if _, _, err := run(t, home, "destroy", "vm1", "vm2"); err != nil {
		t.Fatal(err)
	}
	if out, _, _ := run(t, home, "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("after destroy: %s", out)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatal("the immutable disk went with its machine")
	}
}

func TestCLIErrors(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	badHW := filepath.Join(home, "hw.yaml")
	os.WriteFile(badHW, []byte("memory-size: 512\ncpus: 2\n"), 0o644)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"create", "vm"}, "--image is required"},
		{[]string{"create", "bad/name", "--image", disk}, "machine name"},
		{[]string{"create", "vm", "--image", disk, "--hardware", "mega"}, `hardware model "mega"`},
		{[]string{"create", "vm", "--image", disk, "--hardware", badHW}, `unknown key "cpus"`},
		{[]string{"create", "vm", "--image", "./missing.qcow2"}, "--image ./missing.qcow2: file not found"},
		{[]string{"create", "vm", "--image", disk, "--cpus", "999"}, "cpu-count: 999 is more than the host's"},
		{[]string{"start", "ghost"}, `not found: machine "ghost"`},
		{[]string{"pause", "ghost"}, "not found"},
		{[]string{"hardware", "show", "nope"}, "known: micro"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, _, err := run(t, home, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if strings.Contains(oneLine(err.Error()), "\n") {
				t.Fatal("error is not one line")
			}
		})
	}
	// Wrong state: pause a powered-off machine.
	if _, _, err := run(t, home, "create", "off", "--image", disk); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, home, "pause", "off"); err == nil || !strings.Contains(err.Error(), `cannot pause machine "off": it is powered-off`) {
		t.Fatalf("err = %v", err)
	}
}

func TestCLIWarnsAboutMutableDisks(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "mine.raw")
	testutil.BlankDisk(t, disk, 0o644)
	_, errOut, err := run(t, home, "create", "vm", "--image", disk)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, "not immutable") || !strings.Contains(errOut, "deletes it") {
		t.Fatalf("no warning: %q", errOut)
	}
	// destroy says which file goes with the machine; --keep-disk keeps it.
	out, _, err := run(t, home, "destroy", "vm", "--keep-disk")
	if err != nil || !strings.Contains(out, "kept vm's disk "+disk) {
		t.Fatalf("destroy --keep-disk: %q, %v", out, err)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("--keep-disk lost the disk: %v", err)
	}
	if _, _, err := run(t, home, "create", "vm", "--image", disk); err != nil {
		t.Fatal(err)
	}
	out, _, err = run(t, home, "destroy", "vm")
	if err != nil || !strings.Contains(out, "deleted vm's disk "+disk) {
		t.Fatalf("destroy: %q, %v", out, err)
	}
	if _, err := os.Stat(disk); !os.IsNotExist(err) {
		t.Fatalf("the disk survived destroy: %v", err)
	}
}

func TestCLIHardwareAndVersion(t *testing.T) {
	home := t.TempDir()
	out, _, err := run(t, home, "hardware", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var items []map[string]any
	json.Unmarshal([]byte(out), &items)
	if len(items) != 5 || items[0]["name"] != "micro" || items[0]["memory-size"].(float64) != 512 {
		t.Fatalf("hardware list = %s", out)
	}
	out, _, err = run(t, home, "hardware", "show", "medium")
	if err != nil || !strings.Contains(out, "memory-size: 2048") || !strings.Contains(out, "cpu-count: 2") {
		t.Fatalf("hardware show: %q %v", out, err)
	}
	if out, _, err := run(t, home, "version"); err != nil || !strings.HasPrefix(out, "vmfest ") {
		t.Fatalf("version: %q %v", out, err)
	}
	if out, _, err := run(t, home, "doctor"); err != nil || !strings.Contains(out, "all well") {
		t.Fatalf("doctor: %q %v", out, err)
	}
}

func TestCLIDiskSize(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	out, _, err := run(t, home, "--json", "create", "big", "--image", disk, "--hardware", "micro", "--disk-size", "64M")
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		HardwareSpec struct {
			DiskSize string `json:"disk-size"`
		} `json:"hardware-spec"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.HardwareSpec.DiskSize != "64M" {
		t.Fatalf("create --disk-size 64M --json: %s (%v)", out, err)
	}
	for _, c := range []struct{ size, says string }{
		{"5Q", `--disk-size 5Q: "5Q" is not a size`},
		{"0", "--disk-size 0: must be more than 0"},
		{"512K", "disk-size: 512K is smaller than the image"},
	} {
		_, errOut, err := run(t, home, "create", "small", "--image", disk, "--disk-size", c.size)
		if err == nil || !strings.Contains(errOut+err.Error(), c.says) {
			t.Errorf("--disk-size %s: %q, %v; want %q", c.size, errOut, err, c.says)
		}
	}
}

func TestCLILabels(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	for _, c := range [][]string{
		{"create", "a1", "--image", disk, "--label", "role=web", "--label", "tier=1"},
		{"create", "a2", "--image", disk, "--label", "role=db"},
		{"label", "a1", "env=prod", "tier-"},
	} {
		if _, _, err := run(t, home, c...); err != nil {
			t.Fatalf("%v: %v", c, err)
		}
	}
	out, _, err := run(t, home, "--json", "list", "--label", "role=web")
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || rows[0].Name != "a1" || rows[0].Labels["env"] != "prod" || rows[0].Labels["tier"] != "" {
		t.Fatalf("list --label role=web --json: %s (%v)", out, err)
	}
	if out, _, err := run(t, home, "show", "a1"); err != nil || !strings.Contains(out, "env=prod role=web") {
		t.Fatalf("show: %q, %v", out, err)
	}
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"label", "a1", "nokey"}, `label "nokey": write key=value (or key- to remove it)`},
		{[]string{"list", "--label", "x"}, `--label: invalid: label "x": write key=value`},
		{[]string{"create", "a3", "--image", disk, "--label", "-x=1"}, `label "-x": a key is`},
		{[]string{"create", "a3", "--image", disk, "--user-data", filepath.Join(home, "none")}, "--user-data " + filepath.Join(home, "none") + ": file not found"},
	} {
		_, errOut, err := run(t, home, c.args...)
		if err == nil || !strings.Contains(errOut+err.Error(), c.says) {
			t.Errorf("%v: %q, %v; want %q", c.args, errOut, err, c.says)
		}
	}
}

func TestCLISet(t *testing.T) {
	home := t.TempDir()
	disk := filepath.Join(home, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	if _, _, err := run(t, home, "create", "s1", "--image", disk); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, home, "set", "s1", "--memory", "256", "--disk-size", "8M")
	if err != nil || !strings.Contains(out, "changed s1: hardware custom (256 MiB, 1 CPU, disk 8M)") {
		t.Fatalf("set: %q, %v", out, err)
	}
	out, _, err = run(t, home, "--json", "resize", "s1", "--disk-size", "16M")
	if err != nil || !strings.Contains(out, `"disk-size": "16M"`) {
		t.Fatalf("resize --json: %q, %v", out, err)
	}
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"set", "s1"}, "nothing to change"},
		{[]string{"set", "s1", "--memory", "0"}, "--memory 0: must be a positive number"},
		{[]string{"resize", "s1"}, "--disk-size is required"},
		{[]string{"resize", "s1", "--disk-size", "4M"}, "disk-size: 4M is smaller than the machine's disk"},
		{[]string{"set", "nope", "--memory", "256"}, `machine "nope"`},
	} {
		_, errOut, err := run(t, home, c.args...)
		if err == nil || !strings.Contains(errOut+err.Error(), c.says) {
			t.Errorf("%v: %q, %v; want %q", c.args, errOut, err, c.says)
		}
	}
}
