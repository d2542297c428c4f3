package vmfest_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

// TestCopyRoundTrip boots one tiny guest and copies a directory of files
// into it and back, byte for byte and with modes, over every transport:
// SSH and the guest agent, in process and through a served API (whose
// server reaches the guest the same two ways).
func TestCopyRoundTrip(t *testing.T) {
	image := vmfest.TinyImage(t)
	l := vmfest.NewTestServer(t)
	r := serve(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// 256 MiB: the tiny guest's files live in its memory (an initramfs),
	// and the agent's copies hold the tar twice there for a moment.
	hw := vmfest.HardwareSpec(spec.Hardware{MemorySize: 256, CPUCount: 1, Network: []spec.NIC{{AttachmentType: spec.AttachNAT}}})
	m, err := l.Instance(ctx, "cp", vmfest.ImageSpec(image), hw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.PowerDown(context.Background()) })

	src := filepath.Join(t.TempDir(), "tree")
	files := map[string]fs.FileMode{"a.bin": 0o644, "sub/b.bin": 0o600, "sub/deeper/run.sh": 0o755, "empty": 0o644, "big.bin": 0o640}
	for name, mode := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		data := make([]byte, len(name)*7919)
		switch name {
		case "empty":
			data = nil
		case "big.bin": // over two of the agent's 2 MiB chunks
			data = make([]byte, 5<<20+3)
		}
		rand.Read(data)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}

	// A machine that does not run is refused, as exec is.
	var se *vmfest.StateError
	if err := vmfest.CopyTo(ctx, m, src, "/tmp", vmfest.CopyOptions{Via: vmfest.CopyViaAgent}); !errors.As(err, &se) || se.State != vmfest.PoweredOff {
		t.Fatalf("copy to a powered-off machine: %v, want a *StateError", err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		log, _ := m.ConsoleLog(ctx)
		t.Fatalf("%v\nconsole:\n%s", err, log)
	}
	rm, err := r.FindMachine(ctx, "cp")
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name string
		m    vmfest.Machine
		via  string
	}{
		{"local agent", m, vmfest.CopyViaAgent},
		{"local ssh", m, vmfest.CopyViaSSH},
		{"local auto", m, vmfest.CopyViaAuto},
		{"remote agent", rm, vmfest.CopyViaAgent},
		{"remote ssh", rm, vmfest.CopyViaSSH},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := vmfest.CopyOptions{Via: c.via}
			var last, total int64
			opts.Progress = func(done, tot int64) { last, total = done, tot }
			guest := "/tmp/" + filepath.Base(t.Name())
			t.Cleanup(func() { // room in the guest's memory for the next transport
				m.Exec(ctx, vmfest.ExecRequest{Command: []string{"rm", "-rf", guest, "/tmp/a.bin"}})
			})
			if err := vmfest.CopyTo(ctx, c.m, src, guest, opts); err != nil {
				t.Fatal(err)
			}
			if last != total || total < 5<<20 {
				t.Errorf("progress ended at %d of %d", last, total)
			}
			back := filepath.Join(t.TempDir(), "back")
			if err := vmfest.CopyFrom(ctx, c.m, guest, back, opts); err != nil {
				t.Fatal(err)
			}
			for name, mode := range files {
				st, err := os.Stat(filepath.Join(back, name))
				if err != nil {
					t.Fatal(err)
				}
				if st.Mode().Perm() != mode {
					t.Errorf("%s: mode %v, want %v", name, st.Mode().Perm(), mode)
				}
				if testutil.MustSumFile(t, filepath.Join(back, name)) != testutil.MustSumFile(t, filepath.Join(src, name)) {
					t.Errorf("%s differs after the round trip", name)
				}
			}
			// Into an existing directory, then out of it into one.
			if err := vmfest.CopyTo(ctx, c.m, filepath.Join(src, "a.bin"), "/tmp", opts); err != nil {
				t.Fatal(err)
			}
			if err := vmfest.CopyFrom(ctx, c.m, "/tmp/a.bin", back, opts); err != nil {
				t.Fatal(err)
			}
			if testutil.MustSumFile(t, filepath.Join(back, "a.bin")) != testutil.MustSumFile(t, filepath.Join(src, "a.bin")) {
				t.Error("a file copied into a directory differs")
			}
			if err := vmfest.CopyFrom(ctx, c.m, "/no/such/file", back, opts); !errors.Is(err, vmfest.ErrNotFound) {
				t.Errorf("copy of a missing guest file: %v, want ErrNotFound", err)
			}
			if err := vmfest.CopyTo(ctx, c.m, src, "relative/path", opts); !errors.Is(err, vmfest.ErrInvalid) {
				t.Errorf("copy to a relative guest path: %v, want ErrInvalid", err)
			}
		})
	}
	// The agent path leaves no temporary file in the guest.
	res, err := m.Exec(ctx, vmfest.ExecRequest{Command: []string{"sh", "-c", "ls -a /tmp /tmp/* | grep -c vmfest-cp; true"}})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "0\n" {
		t.Errorf("temporary files left in the guest: %q", res.Stdout)
	}
}
