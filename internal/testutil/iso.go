package testutil

import (
	"bytes"
	"os"
	"sort"
	"testing"

	"github.com/kdomanski/iso9660"
)

// MinISOSize is what WriteISO pads an image to: some label probes
// (busybox's findfs) read 68 KiB from the start of a device and give up on
// a shorter one, as the cloud-init seed's writer says.
const MinISOSize = 128 << 10

// WriteISO writes an ISO 9660 image labelled label (A-Z, 0-9 and _) at
// path holding files (name to contents, in the top directory), padded to
// at least MinISOSize, read-only, and returns path.
func WriteISO(t testing.TB, path, label string, files map[string][]byte) string {
	t.Helper()
	w, err := iso9660.NewWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cleanup()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := w.AddFile(bytes.NewReader(files[n]), n); err != nil {
			t.Fatalf("ISO %s: %v", n, err)
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o444)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := w.WriteTo(f, label); err != nil {
		t.Fatalf("ISO %s: %v", path, err)
	}
	if st, err := f.Stat(); err != nil {
		t.Fatal(err)
	} else if st.Size() < MinISOSize {
		if err := f.Truncate(MinISOSize); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}
