package qemu_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
)

// tinySpec is the StartSpec bootTiny started m with, for a resume.
func tinySpec(t *testing.T, m driver.Machine) driver.StartSpec {
	t.Helper()
	h := spec.BuiltinHardware()["micro"]
	h.MemorySize = 256
	h.Network = nil
	raw, err := exec.Command("qemu-img", "info", "-U", "--output=json", filepath.Join(m.Dir, "disk.qcow2")).Output()
	if err != nil {
		t.Fatal(err)
	}
	out := string(raw)
	i := strings.Index(out, `"backing-filename": "`)
	if i < 0 {
		t.Fatalf("no backing file in %s", out)
	}
	base := out[i+len(`"backing-filename": "`):]
	base = base[:strings.IndexByte(base, '"')]
	return driver.StartSpec{
		Machine:  m,
		Hardware: h,
		Disk:     driver.Disk{Path: filepath.Join(m.Dir, "disk.qcow2"), Format: spec.DiskFormatQCOW2, BackingPath: base, BackingFormat: spec.DiskFormatQCOW2},
	}
}

// TestSaveResumeTinyGuest saves the running tiny guest through the QEMU
// driver (QMP getfd + migrate fd:), ends QEMU, resumes it from the file
// (-incoming fd:3 -S) and finds the process it started before still
// running, with the same pid.
func TestSaveResumeTinyGuest(t *testing.T) {
	d, m, a := bootTiny(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := driver.Exec(ctx, a, driver.ExecRequest{Path: "sh", Args: []string{"-c", "sleep 100000 >/dev/null 2>&1 & echo $!"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("start a process: %+v %v", res, err)
	}
	pid := strings.TrimSpace(string(res.Stdout))
	a.Close()

	path := filepath.Join(m.Dir, "saved.state.new")
	begun := time.Now()
	if err := d.Save(ctx, m, path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("saved %d MiB in %v", fi.Size()>>20, time.Since(begun).Round(time.Millisecond))
	if st, err := d.Status(ctx, m); err != nil || st.State != driver.Saved {
		t.Fatalf("status after save: %+v %v", st, err)
	}
	if err := d.PowerOff(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.Clean(ctx, m); err != nil {
		t.Fatal(err)
	}

	s := tinySpec(t, m)
	s.Incoming = path
	begun = time.Now()
	started, err := d.Start(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if started.Restored != driver.Running {
		t.Fatalf("restored %q, want running", started.Restored)
	}
	if st, err := d.Status(ctx, m); err != nil || st.State != driver.Paused {
		t.Fatalf("status after the load: %+v %v", st, err)
	}
	if err := d.Resume(ctx, m); err != nil {
		t.Fatal(err)
	}
	loaded := time.Since(begun)
	a2, err := d.Agent(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	t.Logf("running again after %v, agent after %v", loaded.Round(time.Millisecond), time.Since(begun).Round(time.Millisecond))
	res, err = driver.Exec(ctx, a2, driver.ExecRequest{Path: "kill", Args: []string{"-0", pid}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("process %s after the resume: %+v %v", pid, res, err)
	}
}
