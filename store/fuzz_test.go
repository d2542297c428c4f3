package store

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzValidateName: a name that validates is always one safe path element.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"vm1", "..", "a/b", "a\x00", ".x", "-x", "x.y_z-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidateName("machine", name) != nil {
			return
		}
		if strings.ContainsAny(name, "/\x00") || name == "." || name == ".." || strings.HasPrefix(name, ".") {
			t.Fatalf("%q validated", name)
		}
		if filepath.Base(filepath.Join("/root", name)) != name {
			t.Fatalf("%q is not one path element", name)
		}
	})
}
