package qemu_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

// bootTiny boots the tiny guest through the QEMU driver on an overlay of
// its image (no NICs: the agent needs none) and returns the driver, the
// machine and a connected agent. Everything is undone when the test ends.
func bootTiny(t *testing.T) (*qemu.Driver, driver.Machine, driver.Agent) {
	t.Helper()
	meta := testutil.TinyImageMeta(t) // skips with -short
	b, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	im, err := spec.ParseImage(b)
	if err != nil {
		t.Fatal(err)
	}
	base := im.Location
	if !filepath.IsAbs(base) {
		base = filepath.Join(filepath.Dir(meta), base)
	}
	// A short directory: the sockets' paths must fit sun_path.
	dir, err := os.MkdirTemp("", "vmx")
	if err != nil {
		t.Fatal(err)
	}
	m := driver.Machine{Name: "exec", Dir: dir, ID: "i-exec-test"}
	d, err := qemu.New(qemu.Options{Accel: qemu.AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if out, err := d.Console(context.Background(), m); err == nil {
				t.Logf("console (last 2000 bytes):\n%s", out[max(0, len(out)-2000):])
			}
		}
		d.Kill(context.Background(), m)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		d.WaitExit(ctx, m)
		d.Clean(ctx, m)
		cancel()
		os.RemoveAll(dir)
	})
	overlay := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	h := spec.BuiltinHardware()["micro"]
	h.MemorySize = 256
	h.Network = nil
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.Start(ctx, driver.StartSpec{
		Machine:  m,
		Hardware: h,
		Disk:     driver.Disk{Path: overlay, Format: spec.DiskFormatQCOW2, BackingPath: base, BackingFormat: spec.DiskFormatQCOW2},
	}); err != nil {
		t.Fatal(err)
	}
	// The agent starts late in the guest's boot; under TCG on a loaded
	// host that can take a while.
	actx, acancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer acancel()
	a, err := d.Agent(actx, m)
	if err != nil {
		t.Fatalf("guest agent: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	return d, m, a
}

// TestExecTinyGuest runs commands in the tiny guest through the QEMU
// driver's agent and driver.Exec: exit codes, both streams, standard
// input, the environment, a signal, bounded output and missing programs.
func TestExecTinyGuest(t *testing.T) {
	_, _, a := bootTiny(t)
	stdin := append([]byte("hello from the host\n"), 0, 0xff, '\n')
	var every [256]byte
	for i := range every {
		every[i] = byte(i)
	}
	large := bytes.Repeat(every[:], 3<<20/len(every)) // 4 MiB as base64: over the agent's old 1 MiB request bound
	tests := []struct {
		name    string
		req     driver.ExecRequest
		want    driver.ExecResult
		outLen  int      // when set, the length of stdout instead of its bytes
		wantErr []string // substrings of the error
	}{
		{name: "exit code and both streams",
			req:  driver.ExecRequest{Path: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 7"}},
			want: driver.ExecResult{ExitCode: 7, Stdout: []byte("out\n"), Stderr: []byte("err\n")}},
		{name: "stdin through cat",
			req:  driver.ExecRequest{Path: "cat", Stdin: stdin},
			want: driver.ExecResult{Stdout: stdin}},
		{name: "3 MiB of stdin through cat",
			req:  driver.ExecRequest{Path: "cat", Stdin: large},
			want: driver.ExecResult{Stdout: large}},
		{name: "environment",
			req:  driver.ExecRequest{Path: "/bin/sh", Args: []string{"-c", `echo "$GREETING"`}, Env: []string{"GREETING=hi"}},
			want: driver.ExecResult{Stdout: []byte("hi\n")}},
		{name: "killed by a signal",
			req:  driver.ExecRequest{Path: "sh", Args: []string{"-c", "kill -KILL $$"}},
			want: driver.ExecResult{ExitCode: -1, Signal: 9}},
		{name: "output bounded", // 5 MiB, over the tiny agent's 4 MiB
			req:    driver.ExecRequest{Path: "head", Args: []string{"-c", "5242880", "/dev/zero"}},
			want:   driver.ExecResult{StdoutTruncated: true},
			outLen: 4 << 20},
		{name: "the shell cannot find it: 127",
			req:  driver.ExecRequest{Path: "sh", Args: []string{"-c", "vmfest-no-such-command"}},
			want: driver.ExecResult{ExitCode: 127, Stderr: []byte("sh: vmfest-no-such-command: not found\n")}},
		{name: "the agent cannot find it: an error",
			req:     driver.ExecRequest{Path: "vmfest-no-such-command"},
			wantErr: []string{"exec vmfest-no-such-command: the guest agent could not start it", "executable file not found"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			got, err := driver.Exec(ctx, a, tt.req)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error; result %+v", got)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q lacks %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			stdoutOK := bytes.Equal(got.Stdout, tt.want.Stdout)
			if tt.outLen > 0 {
				stdoutOK = len(got.Stdout) == tt.outLen
			}
			if !stdoutOK || got.ExitCode != tt.want.ExitCode || got.Signal != tt.want.Signal ||
				!bytes.Equal(got.Stderr, tt.want.Stderr) ||
				got.StdoutTruncated != tt.want.StdoutTruncated || got.StderrTruncated != tt.want.StderrTruncated {
				t.Errorf("result: exit %d signal %d stdout %d bytes %.80q (truncated %v) stderr %q (truncated %v)\nwant:   %+v",
					got.ExitCode, got.Signal, len(got.Stdout), got.Stdout, got.StdoutTruncated, got.Stderr, got.StderrTruncated, tt.want)
			}
		})
	}

	// A deadline while the command runs says so, with its pid; the agent
	// still answers afterwards.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err := driver.Exec(ctx, a, driver.ExecRequest{Path: "sleep", Args: []string{"600"}})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "the command may still run in the guest as pid") {
		t.Errorf("deadline: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got, err := driver.Exec(ctx, a, driver.ExecRequest{Path: "true"})
	if err != nil || got.ExitCode != 0 {
		t.Errorf("after a deadline: %+v %v", got, err)
	}
}
