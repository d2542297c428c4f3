package vmfest

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/testutil"
)

// TestReadTarRefusesEscapes: a hostile guest's tar cannot write outside
// the destination: by name, by "..", by an absolute path, or through a
// symbolic link it sent first.
func TestReadTarRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	for _, c := range []struct {
		name    string
		entries []tar.Header
	}{
		{"dot-dot", []tar.Header{{Name: "top/../../evil", Typeflag: tar.TypeReg, Mode: 0o644}}},
		{"absolute", []tar.Header{{Name: "/etc/evil", Typeflag: tar.TypeReg, Mode: 0o644}}},
		{"other top", []tar.Header{{Name: "other/evil", Typeflag: tar.TypeReg, Mode: 0o644}}},
		{"through a symlink", []tar.Header{
			{Name: "top/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "top/link", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "top/link/evil", Typeflag: tar.TypeReg, Mode: 0o644},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, h := range c.entries {
				h := h
				if err := tw.WriteHeader(&h); err != nil {
					t.Fatal(err)
				}
			}
			tw.Close()
			dest := t.TempDir()
			root, err := os.OpenRoot(dest)
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			if err := readTar(&buf, root, "top", "copy"); err == nil {
				t.Fatal("a tar that escapes was unpacked")
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 0 {
				t.Fatalf("written outside: %v", entries)
			}
		})
	}
}

// TestCopyRoundTrip copies a directory of files into the tiny guest and
// back, and checks every file byte for byte, with its mode.
func TestCopyRoundTrip(t *testing.T) {
	image := tinyImage(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 3*time.Minute)
	m := bootTiny(ctx, t, l, "cp", image, natHardware())
	signer, _, err := l.SSHKey()
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "tree")
	files := map[string]fs.FileMode{"a.bin": 0o644, "sub/b.bin": 0o600, "sub/deeper/run.sh": 0o755, "empty": 0o644}
	for name, mode := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		data := make([]byte, len(name)*7919)
		if name == "empty" {
			data = nil
		}
		rand.Read(data)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := CopyTo(ctx, m, signer, src, "/tmp"); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(t.TempDir(), "back")
	if err := CopyFrom(ctx, m, signer, "/tmp/tree", back); err != nil {
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
	// A file onto a new name, and a guest path that does not exist.
	if err := CopyTo(ctx, m, signer, filepath.Join(src, "a.bin"), "/tmp/renamed.bin"); err != nil {
		t.Fatal(err)
	}
	if err := CopyFrom(ctx, m, signer, "/tmp/renamed.bin", filepath.Join(back, "again.bin")); err != nil {
		t.Fatal(err)
	}
	if testutil.MustSumFile(t, filepath.Join(back, "again.bin")) != testutil.MustSumFile(t, filepath.Join(src, "a.bin")) {
		t.Error("a file copied to a new name differs")
	}
	if err := CopyFrom(ctx, m, signer, "/no/such/file", back); err == nil || !strings.Contains(err.Error(), "tar exited") {
		t.Errorf("copy of a missing guest file: %v", err)
	}
}
