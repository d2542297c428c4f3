package vmfest

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"
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
			if err := readTar(&buf, root, "top", "copy", nil); err == nil {
				t.Fatal("a tar that escapes was unpacked")
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 0 {
				t.Fatalf("written outside: %v", entries)
			}
		})
	}
}

// TestRenameTar: the stream a machine unpacks keeps only entries under
// its one top, renamed to the target, and refuses the rest.
func TestRenameTar(t *testing.T) {
	for _, c := range []struct {
		name    string
		entries []tar.Header
		want    []string // names written; nil: refused
	}{
		{"a tree", []tar.Header{
			{Name: "top/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "top/a", Typeflag: tar.TypeReg, Mode: 0o600},
			{Name: "./top/sub/", Typeflag: tar.TypeDir, Mode: 0o700},
			{Name: "top/sub/l", Typeflag: tar.TypeSymlink, Linkname: "../a"},
		}, []string{"new/", "new/a", "new/sub/", "new/sub/l"}},
		{"one file", []tar.Header{{Name: "top", Typeflag: tar.TypeReg, Mode: 0o644}}, []string{"new"}},
		{"dot-dot", []tar.Header{{Name: "top/", Typeflag: tar.TypeDir}, {Name: "top/../evil", Typeflag: tar.TypeReg}}, nil},
		{"a second top", []tar.Header{{Name: "top/", Typeflag: tar.TypeDir}, {Name: "other", Typeflag: tar.TypeReg}}, nil},
		{"a prefix of top", []tar.Header{{Name: "top/", Typeflag: tar.TypeDir}, {Name: "topper", Typeflag: tar.TypeReg}}, nil},
		{"a device", []tar.Header{{Name: "top/", Typeflag: tar.TypeDir}, {Name: "top/sda", Typeflag: tar.TypeBlock}}, nil},
		{"a hard link", []tar.Header{{Name: "top/", Typeflag: tar.TypeDir}, {Name: "top/h", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"}}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			var in bytes.Buffer
			tw := tar.NewWriter(&in)
			for _, h := range c.entries {
				if err := tw.WriteHeader(&h); err != nil {
					t.Fatal(err)
				}
			}
			tw.Close()
			tr := tar.NewReader(&in)
			first, err := tr.Next()
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			err = renameTar(&out, tr, first, "top", "new")
			if c.want == nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for rd := tar.NewReader(&out); ; {
				h, err := rd.Next()
				if err != nil {
					break
				}
				got = append(got, h.Name)
			}
			if strings.Join(got, " ") != strings.Join(c.want, " ") {
				t.Fatalf("entries %v, want %v", got, c.want)
			}
		})
	}
	for _, name := range []string{"", ".", "..", "a/b", "/"} {
		if _, err := tarTop(name); !errors.Is(err, ErrInvalid) {
			t.Errorf("tarTop(%q): %v, want ErrInvalid", name, err)
		}
	}
}
