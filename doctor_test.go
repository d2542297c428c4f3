package vmfest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/store"
)

// kinds lists the kinds of findings, sorted, each as kind or kind:machine.
func kinds(found []Finding) []string {
	var out []string
	for _, f := range found {
		k := f.Kind
		if f.Machine != "" {
			k += ":" + f.Machine
		}
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestDoctorPartialVolumes: the hidden directories of an interrupted
// volume create or removal are reported, removed with fix, and left alone
// while a create or removal is in flight (it holds volumes/ shared).
func TestDoctorPartialVolumes(t *testing.T) {
	l, _ := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "kept", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{".creating-data-123456", ".removing-old-1733300000000000000"}
	for _, d := range leftovers {
		p := filepath.Join(l.home.VolumesPath(), d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, store.VolumeDiskFile), []byte("half"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// In flight: a create holds volumes/ shared; nothing is touched.
	busy, err := store.LockDirShared(ctx, l.home.VolumesPath())
	if err != nil {
		t.Fatal(err)
	}
	found, err := l.Doctor(ctx, true)
	busy.Unlock()
	if err != nil || len(found) != 0 {
		t.Fatalf("doctor while a volume operation is in flight = %+v, %v; want nothing", found, err)
	}
	if left := hiddenEntries(l.home.VolumesPath()); len(left) != 2 {
		t.Fatalf("the sweep removed a directory in use: left %v", left)
	}

	found, err = l.Doctor(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(found); !slices.Equal(got, []string{"partial-volume", "partial-volume"}) {
		t.Fatalf("doctor = %+v", found)
	}
	for _, f := range found {
		if f.Fixed {
			t.Errorf("fixed without fix: %+v", f)
		}
	}
	if left := hiddenEntries(l.home.VolumesPath()); len(left) != 2 {
		t.Fatalf("doctor without fix removed something: left %v", left)
	}

	found, err = l.Doctor(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 2 || !found[0].Fixed || !found[1].Fixed {
		t.Fatalf("doctor --fix = %+v", found)
	}
	if left := hiddenEntries(l.home.VolumesPath()); len(left) != 0 {
		t.Fatalf("left after the fix: %v", left)
	}
	if vs, err := l.Volumes(ctx); err != nil || len(vs) != 1 || vs[0].Name != "kept" {
		t.Fatalf("volumes after the fix = %+v, %v", vs, err)
	}
	if found, err := l.Doctor(ctx, true); err != nil || len(found) != 0 {
		t.Fatalf("doctor after the fix = %+v, %v", found, err)
	}

	// A fresh server sweeps them as it opens the directory.
	if err := os.Mkdir(filepath.Join(l.home.VolumesPath(), leftovers[0]), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := NewLocal(Config{Home: l.Home(), Logger: l.log}); err != nil {
		t.Fatal(err)
	}
	if left := hiddenEntries(l.home.VolumesPath()); len(left) != 0 {
		t.Fatalf("NewLocal left %v", left)
	}
}

// TestDoctorVolumesAndMedia: Doctor reports, and never changes even with
// fix, a volume directory that is not whole, a slot whose volume, disk or
// ISO is gone, and a volume two machines' slots hold.
func TestDoctorVolumesAndMedia(t *testing.T) {
	l, _ := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	dir := t.TempDir()
	img := blankImage(t, dir)
	for _, v := range []string{"gone", "norecord", "badrecord", "nodisk", "shared"} {
		if _, err := l.CreateVolume(ctx, VolumeSpec{Name: v, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	userDisk := testutil.BootSectorDisk(t, filepath.Join(dir, "user.raw"))
	iso := fakeISO(t, filepath.Join(dir, "media.iso"))
	if _, err := l.Instance(ctx, "m1", ImageSpec(img), natHardware(),
		WithAttachment(Attachment{Volume: "gone"}), WithAttachment(Attachment{Disk: userDisk}),
		WithAttachment(Attachment{ISO: iso}), WithAttachment(Attachment{Volume: "shared"})); err != nil {
		t.Fatal(err)
	}
	m2, err := l.Instance(ctx, "m2", ImageSpec(img), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	if found, err := l.Doctor(ctx, false); err != nil || len(found) != 0 {
		t.Fatalf("doctor on a whole state directory = %+v, %v", found, err)
	}

	// What no crash of vmfest's leaves, but a user's hand or a failing
	// disk may.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.RemoveAll(l.home.VolumePath("gone")))
	must(os.Remove(userDisk))
	must(os.Remove(iso))
	must(os.Remove(filepath.Join(l.home.VolumePath("norecord"), store.VolumeFile)))
	must(os.WriteFile(filepath.Join(l.home.VolumePath("badrecord"), store.VolumeFile), []byte("{not json"), 0o644))
	must(os.Remove(l.home.VolumeDisk("nodisk")))
	r, err := l.readRecord(m2.Name())
	must(err)
	_, err = place(&r.Hardware, Attachment{Volume: "shared"})
	must(err)
	must(writeRecord(l.home.MachinePath(m2.Name()), r))

	want := []string{"corrupt-volume", "corrupt-volume", "corrupt-volume", "missing-media:m1", "missing-media:m1", "missing-volume:m1", "shared-volume"}
	for _, fix := range []bool{false, true} {
		found, err := l.Doctor(ctx, fix)
		if err != nil {
			t.Fatal(err)
		}
		if got := kinds(found); !slices.Equal(got, want) {
			t.Fatalf("doctor (fix %v) = %v, want %v:\n%+v", fix, got, want, found)
		}
		for _, f := range found {
			if f.Fixed || f.Detail == "" || f.Path == "" {
				t.Errorf("doctor (fix %v): %+v: want a report with a path and a detail, nothing fixed", fix, f)
			}
			switch f.Kind {
			case "missing-volume":
				if !strings.Contains(f.Detail, "volume gone") || !strings.Contains(f.Detail, "vmfest detach m1 gone") {
					t.Errorf("missing-volume says %q", f.Detail)
				}
			case "shared-volume":
				if !strings.Contains(f.Detail, "m1, m2") {
					t.Errorf("shared-volume says %q", f.Detail)
				}
			}
		}
	}
	for _, v := range []string{"norecord", "badrecord", "nodisk"} {
		if _, err := os.Stat(l.home.VolumePath(v)); err != nil {
			t.Errorf("doctor --fix removed volume %s's directory: %v", v, err)
		}
	}
	// The volumes that are whole still list; the others are left out.
	vs, err := l.Volumes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range vs {
		names = append(names, v.Name)
	}
	if !slices.Equal(names, []string{"nodisk", "shared"}) {
		t.Errorf("volumes = %v", names)
	}
}
