package vmfest

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/driver/fake"
)

func TestLabels(t *testing.T) {
	l, _ := newFakeServer(t, fake.Options{})
	ctx := context.Background()
	img := blankImage(t, t.TempDir())
	m, err := l.Instance(ctx, "lab", ImageSpec(img), natHardware(), WithLabels(map[string]string{"role": "web", "tier": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	check := func(want map[string]string) {
		t.Helper()
		info, err := m.Info(ctx)
		if err != nil || !maps.Equal(info.Labels, want) {
			t.Fatalf("labels = %v (%v), want %v", info.Labels, err, want)
		}
	}
	check(map[string]string{"role": "web", "tier": "1"})
	if err := m.Relabel(ctx, map[string]string{"env": "prod", "role": "db"}, []string{"tier"}); err != nil {
		t.Fatal(err)
	}
	check(map[string]string{"role": "db", "env": "prod"})
	if err := m.Relabel(ctx, nil, []string{"role", "env", "absent"}); err != nil {
		t.Fatal(err)
	}
	check(nil)
	for _, c := range []struct {
		name   string
		set    map[string]string
		remove []string
		says   string
	}{
		{"bad key", map[string]string{"-x": "1"}, nil, `label "-x": a key is`},
		{"bad value", map[string]string{"k": "a b"}, nil, `label k="a b": a value is`},
		{"set and removed", map[string]string{"k": "1"}, []string{"k"}, "both set and removed"},
	} {
		if err := m.Relabel(ctx, c.set, c.remove); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", c.name, err, c.says)
		}
	}
	check(nil)
	if _, err := l.Instance(ctx, "bad", ImageSpec(img), natHardware(), WithLabels(map[string]string{"k=": "v"})); !errors.Is(err, ErrInvalid) {
		t.Errorf("create with a bad label: %v", err)
	}
	for _, c := range []struct {
		in        string
		removable bool
		k, v      string
		remove    bool
		bad       bool
	}{
		{"a=b", false, "a", "b", false, false},
		{"a=", false, "a", "", false, false},
		{"a-", true, "a", "", true, false},
		{"a-", false, "", "", false, true},
		{"a", true, "", "", false, true},
	} {
		k, v, remove, err := ParseLabel(c.in, c.removable)
		if (err != nil) != c.bad || k != c.k || v != c.v || remove != c.remove {
			t.Errorf("ParseLabel(%q, %v) = %q %q %v %v", c.in, c.removable, k, v, remove, err)
		}
	}
}

// TestUserData: a user-data is checked at create, kept with the machine
// and passed to cloud-init in the seed; an image without cloud-init
// refuses it.
func TestUserData(t *testing.T) {
	l, fk := newFakeServer(t, fake.Options{})
	ctx := context.Background()
	plain := blankImage(t, t.TempDir())
	ci := plain
	ci.CloudInit = true
	user := []byte("#cloud-config\nruncmd: [touch /tmp/vmfest-user-data-ran]\n")
	for _, c := range []struct {
		name string
		img  Image
		data []byte
		says string
	}{
		{"no cloud-init", ImageSpec(plain), user, "user-data: the image"},
		{"not yaml", ImageSpec(ci), []byte("#cloud-config\nruncmd: [x\n"), "#cloud-config is not YAML"},
		{"unknown first line", ImageSpec(ci), []byte("echo hi\n"), `line 1: "echo hi"`},
	} {
		if _, err := l.Instance(ctx, "ud", c.img, natHardware(), WithUserData(c.data)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want ErrInvalid saying %q", c.name, err, c.says)
		}
		if _, err := l.FindMachine(ctx, "ud"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: a refused create left a machine", c.name)
		}
	}
	m, err := l.Instance(ctx, "ud", ImageSpec(ci), natHardware(), WithUserData(user))
	if err != nil {
		t.Fatal(err)
	}
	dir := l.home.MachinePath("ud")
	if info, err := m.Info(ctx); err != nil || !info.UserData {
		t.Fatalf("info = %+v, %v", info, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "user-data")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the kept user-data: %v %v", st, err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	s, _ := fk.Started(dir)
	seed, err := os.ReadFile(s.Seed)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(seed, user) || !bytes.Contains(seed, []byte("multipart/mixed")) {
		t.Fatal("the seed does not carry the user's user-data whole in a multipart")
	}
}
