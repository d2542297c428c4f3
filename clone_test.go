package vmfest

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Clones against the fake driver (-short): the states a clone is made
// from, its refusals, what a failure leaves, and that the source's files
// never change. Against real QEMU: clone_e2e_test.go.

// execFake is the fake driver whose guest agent also runs guest-exec (as
// a guest that does what it is told), recording each command.
type execFake struct {
	*fake.Driver
	mu    sync.Mutex
	execs map[string][][]string // by machine name
	links map[string][]string   // SetLink calls by machine name
	// native, when set, makes the agent answer vmfest-reidentify (as the
	// tiny guest's does) with native's error, recording the arguments.
	native    *error
	reidentes map[string][]json.RawMessage
}

func (d *execFake) Agent(ctx context.Context, m driver.Machine) (driver.Agent, error) {
	a, err := d.Driver.Agent(ctx, m)
	if err != nil {
		return nil, err
	}
	return &execAgent{Agent: a, d: d, name: m.Name}, nil
}

// SetLink implements driver.Links: it records each call as "SLOT up" or
// "SLOT down".
func (d *execFake) SetLink(ctx context.Context, m driver.Machine, slot int, up bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.links[m.Name] = append(d.links[m.Name], fmt.Sprintf("%d %s", slot, map[bool]string{true: "up", false: "down"}[up]))
	return nil
}

func (d *execFake) linkCalls(name string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.links[name])
}

func (d *execFake) commands(name string) [][]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.execs[name])
}

type execAgent struct {
	driver.Agent
	d    *execFake
	name string
}

func (a *execAgent) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	switch command {
	case "guest-exec":
		var req struct {
			Path string   `json:"path"`
			Arg  []string `json:"arg"`
		}
		js, _ := json.Marshal(args)
		json.Unmarshal(js, &req)
		a.d.mu.Lock()
		a.d.execs[a.name] = append(a.d.execs[a.name], append([]string{req.Path}, req.Arg...))
		a.d.mu.Unlock()
		return json.RawMessage(`{"pid": 7}`), nil
	case "guest-exec-status":
		return json.RawMessage(`{"exited": true, "exitcode": 0}`), nil
	case reidentifyCommand:
		if a.d.native == nil {
			break
		}
		js, _ := json.Marshal(args)
		a.d.mu.Lock()
		a.d.reidentes[a.name] = append(a.d.reidentes[a.name], js)
		a.d.mu.Unlock()
		if *a.d.native != nil {
			return nil, *a.d.native
		}
		return json.RawMessage(`{"changed": ["eth0"], "dhcp-clients": 1}`), nil
	}
	return a.Agent.Execute(ctx, command, args)
}

// newCloneFake returns a Local on the exec-capable fake and a started
// machine "src" of it on one NAT NIC, with a label.
func newCloneFake(t *testing.T) (*Local, *execFake, Machine) {
	t.Helper()
	fk := &execFake{Driver: fake.New(fake.Options{}), execs: map[string][][]string{}, links: map[string][]string{}, reidentes: map[string][]json.RawMessage{}}
	l, err := NewLocal(Config{Home: t.TempDir(), Driver: fk, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 30*time.Second)
	m, err := l.Instance(ctx, "src", ImageSpec(blankImage(t, t.TempDir())), natHardware(), WithLabels(map[string]string{"role": "web"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return l, fk, m
}

// dirSums are the checksums of the files of a machine directory that a
// clone must never change (its disk, record, saved state, user-data).
func dirSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range []string{store.DiskFile, store.MachineFile, store.SavedStateFile, store.UserDataFile} {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		out[n] = hex.EncodeToString(sum[:])
	}
	return out
}

// noCreating fails when a clone left a hidden directory behind.
func noCreating(t *testing.T, l *Local) {
	t.Helper()
	ents, err := os.ReadDir(l.home.MachinesPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".creating-") {
			t.Fatalf("left behind: %s", e.Name())
		}
	}
}

func TestFakeCloneStates(t *testing.T) {
	for _, tc := range []struct {
		name   string
		prep   func(ctx context.Context, m Machine) error
		source State // the source's state before and after
		clone  State
	}{
		{"powered-off", func(ctx context.Context, m Machine) error { return m.PowerDown(ctx) }, PoweredOff, PoweredOff},
		{"saved", func(ctx context.Context, m Machine) error { return m.Save(ctx) }, Saved, Running},
		{"running", func(ctx context.Context, m Machine) error { return nil }, Running, Running},
		{"paused", func(ctx context.Context, m Machine) error { return m.Pause(ctx) }, Paused, Paused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, fk, m := newCloneFake(t)
			ctx := ctxTimeout(t, 30*time.Second)
			if err := tc.prep(ctx, m); err != nil {
				t.Fatal(err)
			}
			srcDir := l.home.MachinePath("src")
			before := dirSums(t, srcDir)
			bootBefore := fk.Boot(srcDir)
			c, err := m.Clone(ctx, "c1")
			if err != nil {
				t.Fatal(err)
			}
			expectState(t, m, tc.source)
			expectState(t, c, tc.clone)
			if after := dirSums(t, srcDir); !mapsEqual(before, after) {
				t.Fatalf("the source's files changed:\n%v\n%v", before, after)
			}
			noCreating(t, l)
			sr, err := l.readRecord("src")
			if err != nil {
				t.Fatal(err)
			}
			cr, err := l.readRecord("c1")
			if err != nil {
				t.Fatal(err)
			}
			if cr.Net.ID == "" || cr.Net.ID == sr.Net.ID || cr.GenID == "" || cr.GenID == sr.GenID || !driver.ValidGenID(cr.GenID) {
				t.Fatalf("clone's id %q genid %q, source's %q %q", cr.Net.ID, cr.GenID, sr.Net.ID, sr.GenID)
			}
			// Its nat NIC keeps the source's MAC when it has the
			// source's memory (see cloneRecord), gets a new one else.
			memory := tc.clone != PoweredOff
			if (cr.Hardware.Network[0].MACAddress == sr.Hardware.Network[0].MACAddress) != memory || cr.Labels["role"] != "web" || cr.Image != sr.Image || !cr.Overlay {
				t.Fatalf("clone's record: %+v", cr)
			}
			if tc.clone == Paused {
				// Re-identified when it is first resumed.
				if cr.Reidentify == nil || len(fk.commands("c1")) != 0 {
					t.Fatalf("a paused clone was re-identified: %+v", cr.Reidentify)
				}
				if err := c.Resume(ctx); err != nil {
					t.Fatal(err)
				}
				if cr, err = l.readRecord("c1"); err != nil {
					t.Fatal(err)
				}
				tc.clone = Running
			}
			if cr.Reidentify != nil {
				t.Fatalf("the clone is still to be re-identified: %+v", cr.Reidentify)
			}
			cdisk, sdisk := filepath.Join(l.home.MachinePath("c1"), store.DiskFile), filepath.Join(srcDir, store.DiskFile)
			if same(t, cdisk, sdisk) {
				t.Fatal("the clone's disk is the source's file")
			}
			if tc.clone != Running {
				if len(fk.commands("c1")) != 0 {
					t.Fatal("a powered-off clone was re-identified")
				}
				return
			}
			// From the source's memory, and re-identified as c1.
			if got := fk.Boot(l.home.MachinePath("c1")); got != bootBefore {
				t.Fatalf("the clone's guest is from boot %d, the source's was %d", got, bootBefore)
			}
			cmds := fk.commands("c1")
			if len(cmds) != 1 || cmds[0][0] != "/bin/sh" || !slices.Contains(cmds[0], "c1") {
				t.Fatalf("re-identification commands: %q", cmds)
			}
			if got := fk.Reseeds(l.home.MachinePath("c1")); got != 1 {
				t.Fatalf("the clone's CRNG was reseeded %d times, want once", got)
			}
			// Its nat NIC keeps the source's MAC (its user-mode network
			// is its own), so its link is never unplugged.
			if got := fk.linkCalls("c1"); len(got) != 0 {
				t.Fatalf("the clone's links: %q", got)
			}
			if got := fk.linkCalls("src"); len(got) != 0 {
				t.Fatalf("the source's links were touched: %q", got)
			}
			if hasSavedState(l.home.MachinePath("c1")) {
				t.Fatal("the running clone kept its saved state")
			}
			if tc.source == Saved {
				// The source resumes from its own state, untouched.
				if err := m.Start(ctx); err != nil {
					t.Fatal(err)
				}
				if got := fk.Boot(srcDir); got != bootBefore {
					t.Fatalf("the source resumed boot %d, want %d", got, bootBefore)
				}
			}
		})
	}
}

// TestFakeCloneByAgentCommand checks a clone re-identified by an agent
// that has vmfest-reidentify: one call with the clone's name, its NICs'
// MACs, 64 bytes of seed and the host's time, no guest-exec, its nat link
// left up (its MAC is the source's); an error from it is the clone's, with no
// script tried after it.
func TestFakeCloneByAgentCommand(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"answered", nil},
		{"failed", &qemu.AgentError{Command: reidentifyCommand, Class: "GenericError", Desc: "network[0]: the guest has no interface"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l, fk, m := newCloneFake(t)
			fk.native = &tt.err
			ctx := ctxTimeout(t, 30*time.Second)
			if err := m.Save(ctx); err != nil {
				t.Fatal(err)
			}
			src, err := l.readRecord("src")
			if err != nil {
				t.Fatal(err)
			}
			sent := time.Now()
			_, err = m.Clone(ctx, "c1")
			if tt.err != nil {
				if !errors.Is(err, ErrNotReidentified) || !strings.Contains(err.Error(), "the guest has no interface") {
					t.Fatalf("clone: %v", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if cmds := fk.commands("c1"); len(cmds) != 0 {
				t.Fatalf("guest-exec was used too: %q", cmds)
			}
			calls := fk.reidentes["c1"]
			if len(calls) != 1 {
				t.Fatalf("%d calls of %s, want 1", len(calls), reidentifyCommand)
			}
			var got struct {
				Hostname string        `json:"hostname"`
				Seed     string        `json:"seed"`
				NICs     []nicIdentity `json:"nics"`
				Time     int64         `json:"time"`
			}
			if err := json.Unmarshal(calls[0], &got); err != nil {
				t.Fatal(err)
			}
			mac := strings.ToLower(src.Hardware.Network[0].MACAddress)
			seed, _ := base64.StdEncoding.DecodeString(got.Seed)
			if got.Hostname != "c1" || len(seed) != 64 || !slices.Equal(got.NICs, []nicIdentity{{Slot: 0, From: mac, To: mac}}) ||
				got.Time < sent.UnixNano() || got.Time > time.Now().UnixNano() {
				t.Fatalf("%s arguments: %s", reidentifyCommand, calls[0])
			}
			if got := fk.linkCalls("c1"); len(got) != 0 {
				t.Fatalf("the clone's nat link was unplugged: %q", got)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// allocated is how many bytes of disk the file at path takes.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

func same(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(fa, fb)
}

func TestFakeCloneTwoFromSaved(t *testing.T) {
	l, fk, m := newCloneFake(t)
	ctx := ctxTimeout(t, 30*time.Second)
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	var macs, ids []string
	for _, n := range []string{"a", "b"} {
		c, err := m.Clone(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		macs = append(macs, info.HardwareSpec.Network[0].MACAddress)
		ids = append(ids, info.GenerationID)
	}
	// A nat NIC keeps the source's MAC in a memory clone (its user-mode
	// network's DHCP state comes with the memory); the generation ids
	// differ.
	srcInfo, err := m.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	src := srcInfo.HardwareSpec.Network[0]
	if src.AttachmentType != spec.AttachNAT || macs[0] != src.MACAddress || macs[1] != src.MACAddress || ids[0] == ids[1] {
		t.Fatalf("clones' nat MACs %v (source %s %s), generation ids %v", macs, src.AttachmentType, src.MACAddress, ids)
	}
	if len(fk.Running()) != 2 {
		t.Fatalf("running: %v", fk.Running())
	}
	expectState(t, m, Saved)
	if _, err := m.Clone(ctx, "a"); !errors.Is(err, ErrExists) {
		t.Fatalf("clone onto an existing machine: %v", err)
	}
	noCreating(t, l)
}

func TestFakeCloneRefused(t *testing.T) {
	ctx := ctxTimeout(t, 30*time.Second)
	t.Run("names", func(t *testing.T) {
		_, _, m := newCloneFake(t)
		for _, n := range []string{"src", "", "bad/name"} {
			if _, err := m.Clone(ctx, n); !errors.Is(err, ErrInvalid) {
				t.Errorf("clone as %q: %v", n, err)
			}
		}
	})
	t.Run("no overlay", func(t *testing.T) {
		l, _, _ := newCloneFake(t)
		img := blankImage(t, t.TempDir())
		img.Immutable = false
		m, err := l.Instance(ctx, "mut", ImageSpec(img), natHardware())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Clone(ctx, "c"); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "overlay") {
			t.Fatalf("clone of a machine without an overlay: %v", err)
		}
	})
	t.Run("volume", func(t *testing.T) {
		l, _, _ := newCloneFake(t)
		if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "v", Size: spec.Size(1 << 20)}); err != nil {
			t.Fatal(err)
		}
		m, err := l.Instance(ctx, "withvol", ImageSpec(blankImage(t, t.TempDir())), natHardware(), WithAttachment(Attachment{Volume: "v"}))
		if err != nil {
			t.Fatal(err)
		}
		_, err = m.Clone(ctx, "c")
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "storage") || !strings.Contains(err.Error(), "v") {
			t.Fatalf("clone of a machine holding a volume: %v", err)
		}
		if _, err := l.FindMachine(ctx, "c"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a refused clone exists: %v", err)
		}
		noCreating(t, l)
	})
	t.Run("memory clone without saver", func(t *testing.T) {
		f := fake.New(fake.Options{Features: &driver.Features{DiskFormats: []string{"qcow2", "raw"}, BackingChain: true, UserNAT: true, Pause: true, GuestAgent: true}})
		l, err := NewLocal(Config{Home: t.TempDir(), Driver: f, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		m, err := l.Instance(ctx, "src", ImageSpec(blankImage(t, t.TempDir())), natHardware())
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Clone(ctx, "c"); !errors.Is(err, ErrUnsupported) {
			t.Fatalf("memory clone on a driver that cannot save: %v", err)
		}
		expectState(t, m, Running)
		if err := m.PowerDown(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Clone(ctx, "c"); err != nil {
			t.Fatalf("powered-off clone on a driver that cannot save: %v", err)
		}
	})
}

// A failed save leaves the source running and nothing of the clone: no
// machine, no hidden directory, no network reservation.
func TestFakeCloneFailedSave(t *testing.T) {
	l, fk, m := newCloneFake(t)
	ctx := ctxTimeout(t, 30*time.Second)
	srcDir := l.home.MachinePath("src")
	before := dirSums(t, srcDir)
	fk.Fail("Save", errors.New("disk full"))
	if _, err := m.Clone(ctx, "c"); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("clone with a failing save: %v", err)
	}
	expectState(t, m, Running)
	if _, err := l.FindMachine(ctx, "c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the failed clone exists: %v", err)
	}
	noCreating(t, l)
	if after := dirSums(t, srcDir); !mapsEqual(before, after) {
		t.Fatal("the source's files changed")
	}
	// A failed start of the clone leaves it saved and says so.
	fk.Fail("Start", errors.New("no memory"))
	c, err := m.Clone(ctx, "c")
	if c == nil || err == nil || !strings.Contains(err.Error(), "did not start") {
		t.Fatalf("clone whose start fails: %v, %v", c, err)
	}
	expectState(t, c, Saved)
	expectState(t, m, Running)
}

// A crash at each point of a clone leaves no clone or a whole one, and
// the source as it was.
func TestFakeClonePoints(t *testing.T) {
	points := []string{"clone:mkdir", "clone:allocated", "clone:disk", "clone:record", "clone:renamed"}
	for _, p := range points {
		t.Run(p, func(t *testing.T) {
			l, _, m := newCloneFake(t)
			ctx := ctxTimeout(t, 30*time.Second)
			if err := m.Save(ctx); err != nil {
				t.Fatal(err)
			}
			errCrash := errors.New("crash")
			func() {
				defer func() {
					if r := recover(); r != nil && r != errCrash {
						panic(r)
					}
				}()
				m.(*localMachine).clone(ctx, "c", func(at string) {
					if at == p {
						panic(errCrash)
					}
				})
			}()
			expectState(t, m, Saved)
			_, err := l.FindMachine(ctx, "c")
			renamed := slices.Index(points, p) >= slices.Index(points, "clone:renamed")
			if renamed != (err == nil) {
				t.Fatalf("after a crash at %s: clone found: %v", p, err)
			}
			if renamed {
				c, _ := l.FindMachine(ctx, "c")
				expectState(t, c, Saved)
				if info, _ := c.Info(ctx); info.ReidentifyPending != "src" {
					t.Fatalf("a clone never started does not say it is to be re-identified: %+v", info)
				}
				// Its next start resumes and re-identifies it.
				if err := c.Start(ctx); err != nil {
					t.Fatal(err)
				}
				if info, _ := c.Info(ctx); info.ReidentifyPending != "" {
					t.Fatalf("still pending after a start: %+v", info)
				}
			}
		})
	}
}

// A guest whose agent cannot run commands keeps its source's identity: the
// clone runs, the error says so, and the flag shows.
func TestFakeCloneNotReidentified(t *testing.T) {
	l, fk := newFakeServer(t, fake.Options{})
	ctx := ctxTimeout(t, 30*time.Second)
	m, err := l.Instance(ctx, "src", ImageSpec(blankImage(t, t.TempDir())), natHardware())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := m.Clone(ctx, "c")
	if c == nil || !errors.Is(err, ErrNotReidentified) {
		t.Fatalf("clone on a guest without guest-exec: %v, %v", c, err)
	}
	expectState(t, c, Running)
	info, err := c.Info(ctx)
	if err != nil || info.ReidentifyPending != "src" {
		t.Fatalf("info %+v, %v", info, err)
	}
	if len(fk.Running()) != 2 {
		t.Fatalf("running: %v", fk.Running())
	}
	// Doctor names it too.
	findings, err := l.Doctor(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range findings {
		found = found || (f.Kind == "reidentify-pending" && f.Machine == "c" && strings.Contains(f.Detail, "a clone of src"))
	}
	if !found {
		t.Fatalf("doctor's findings lack the pending clone: %+v", findings)
	}
}

func TestReidentifyArgs(t *testing.T) {
	r := record{Hardware: spec.Hardware{Network: []spec.NIC{
		{AttachmentType: spec.AttachHostOnly, MACAddress: "52:54:00:00:00:0A"},
		{AttachmentType: spec.AttachNone, MACAddress: "52:54:00:00:00:0b"},
		{AttachmentType: spec.AttachNAT, MACAddress: "52:54:00:00:00:0c"},
		{AttachmentType: spec.AttachNAT, MACAddress: "52:54:00:00:00:0d"},
	}}, Reidentify: &reidentifyRecord{MACs: []string{"52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"}}}
	got := reidentifyArgs("c1", r)
	want := []string{"-c", reidentifyScript, "vmfest-reidentify", "c1",
		"0", "52:54:00:00:00:01", "52:54:00:00:00:0a",
		"2", "52:54:00:00:00:03", "52:54:00:00:00:0c",
		"3", "-", "52:54:00:00:00:0d"}
	if !slices.Equal(got, want) {
		t.Fatalf("args = %q, want %q", got[3:], want[3:])
	}
	seed := reidentifySeed()
	if len(seed) != 129 || seed[128] != '\n' || strings.Trim(string(seed[:128]), "0123456789abcdef") != "" {
		t.Fatalf("seed %q: want 128 hex digits and a newline", seed)
	}
}

// TestReidentifyScriptSyntax parses the re-identification script with each
// POSIX shell the host has of those guests run it with (busybox ash, dash,
// bash).
func TestReidentifyScriptSyntax(t *testing.T) {
	shells := map[string][]string{"busybox ash": {"busybox", "ash"}, "dash": {"dash"}, "bash": {"bash", "--posix"}}
	ran := 0
	for name, argv := range shells {
		path, err := exec.LookPath(argv[0])
		if err != nil {
			continue
		}
		ran++
		t.Run(name, func(t *testing.T) {
			for _, script := range []string{reidentifyScript, reseedPython} {
				out, err := exec.Command(path, append(argv[1:], "-n", "-c", script)...).CombinedOutput()
				if err != nil {
					t.Fatalf("%s -n: %v: %s", name, err, out)
				}
			}
		})
	}
	if ran == 0 {
		t.Skip("no POSIX shell to parse the script with")
	}
	// The Python program inside reseedPython compiles.
	if py, err := exec.LookPath("python3"); err == nil {
		_, rest, _ := strings.Cut(reseedPython, "python3 -c '")
		prog := strings.TrimSuffix(rest, "'")
		if out, err := exec.Command(py, "-c", "import sys; compile(sys.argv[1], 'reseed', 'exec')", prog).CombinedOutput(); err != nil {
			t.Fatalf("python3 does not compile the reseed program: %v: %s\n%s", err, out, prog)
		}
	}
}

func TestCopyDiskSparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	for _, off := range []int64{0, 5 << 20, size - 4096} {
		if _, err := f.WriteAt([]byte(strings.Repeat("x", 4096)), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	dst := filepath.Join(dir, "dst")
	in, _ := os.Open(src)
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := copySparse(in, out, size); err != nil {
		t.Fatal(err)
	}
	in.Close()
	out.Close()
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if string(a) != string(b) {
		t.Fatal("the copy differs")
	}
	if n := allocated(t, dst); n > 1<<20 {
		t.Fatalf("the copy of 12 KiB of data takes %d bytes: its holes were written", n)
	}
	if err := copyDisk(src, filepath.Join(dir, "dst2")); err != nil {
		t.Fatal(err)
	}
	if err := copyDisk(src, dst); err == nil {
		t.Fatal("copyDisk overwrote a file")
	}
}

// TestFakeCloneMemoryTemplate: the first clone of a saved machine makes its
// memory template; each clone starts from hard links of the template's
// files and drops them once it runs; a failed template leaves no half one
// and the clone loads the whole state; the template goes with the saved
// state, and a later save leaves no leftover of it.
func TestFakeCloneMemoryTemplate(t *testing.T) {
	l, fk, m := newCloneFake(t)
	ctx := ctxTimeout(t, 30*time.Second)
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	src := l.home.MachinePath("src")
	tpl := filepath.Join(src, store.TemplateDir)
	ram := filepath.Join(tpl, store.TemplateMemoryFile)
	inode := func(p string) uint64 {
		t.Helper()
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	links := func(p string) uint64 {
		t.Helper()
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return uint64(fi.Sys().(*syscall.Stat_t).Nlink)
	}
	// A failed template: the clone still runs, from the whole state, and
	// nothing half made is left.
	fk.Fail("Template", errors.New("no room"))
	if _, err := m.Clone(ctx, "whole"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tpl); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("template after a failed one: %v", err)
	}
	if g, _ := filepath.Glob(filepath.Join(src, store.TemplateTempPrefix+"*")); len(g) > 0 {
		t.Fatalf("left behind: %v", g)
	}
	sums := dirSums(t, src)
	for _, n := range []string{"a", "b"} {
		if _, err := m.Clone(ctx, n); err != nil {
			t.Fatal(err)
		}
		dir := l.home.MachinePath(n)
		for _, f := range []string{store.SavedStateFile, store.SavedMemoryFile} {
			if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("clone %s still has %s once it runs: %v", n, f, err)
			}
		}
	}
	if got := links(ram); got != 1 {
		t.Fatalf("template RAM file has %d links once the clones run, want 1", got)
	}
	if fi, err := os.Stat(ram); err != nil || fi.Mode().Perm()&0o222 != 0 {
		t.Fatalf("template RAM file: %v, %v; want read-only", fi.Mode(), err)
	}
	if !mapsEqual(sums, dirSums(t, src)) {
		t.Fatal("the clones changed the source's files")
	}
	// A clone that did not start keeps the links, and a clone of it
	// shares them.
	ino := inode(ram)
	fk.Fail("Start", errors.New("no memory"))
	if _, err := m.Clone(ctx, "held"); err == nil {
		t.Fatal("clone started though its start failed")
	}
	held := l.home.MachinePath("held")
	if inode(filepath.Join(held, store.SavedMemoryFile)) != ino {
		t.Fatal("the clone's saved RAM is not the template's")
	}
	h, err := l.FindMachine(ctx, "held")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Clone(ctx, "grand"); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if links(ram) != 1 {
		t.Fatalf("template RAM file has %d links, want 1", links(ram))
	}
	// The source's start discards its saved state and the template.
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tpl); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("template after the source started: %v", err)
	}
	// A crash that left a template and a saved RAM file: a save removes
	// them before it writes, and the next clone makes a new template.
	os.MkdirAll(tpl, 0o700)
	os.WriteFile(filepath.Join(tpl, store.TemplateStateFile), []byte("stale"), 0o600)
	os.WriteFile(filepath.Join(tpl, store.TemplateMemoryFile), []byte("stale"), 0o600)
	os.WriteFile(filepath.Join(src, store.SavedMemoryFile), []byte("stale"), 0o600)
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, store.SavedMemoryFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stale saved RAM file after a save: %v", err)
	}
	if _, err := m.Clone(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{tpl, savedStatePath(src)} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s after the source was powered down: %v", p, err)
		}
	}
	noCreating(t, l)
}

// TestFakeDoctorTemplates: doctor removes a half-made memory template, and
// a template or saved RAM file whose saved state is gone, and keeps a
// saved machine's template.
func TestFakeDoctorTemplates(t *testing.T) {
	l, _, m := newCloneFake(t)
	ctx := ctxTimeout(t, 30*time.Second)
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Clone(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	src, a := l.home.MachinePath("src"), l.home.MachinePath("a")
	half := filepath.Join(src, store.TemplateTempPrefix+"123")
	stale := []string{filepath.Join(a, store.TemplateDir), filepath.Join(a, store.SavedMemoryFile)}
	for _, p := range []string{half, stale[0]} {
		if err := os.MkdirAll(filepath.Join(p, store.TemplateRunDir), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(stale[1], []byte("ram"), 0o400); err != nil {
		t.Fatal(err)
	}
	found, err := l.Doctor(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, f := range found {
		if f.Fixed {
			kinds[f.Path] = f.Kind
		}
	}
	want := map[string]string{half: "partial-template", stale[0]: "stale-template", stale[1]: "stale-template"}
	for p, k := range want {
		if kinds[p] != k {
			t.Errorf("%s: fixed as %q, want %q (findings %+v)", p, kinds[p], k, found)
		}
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(src, store.TemplateDir, store.TemplateMemoryFile)); err != nil {
		t.Fatalf("the saved source's template: %v", err)
	}
}

// TestReidentifyScriptRuns runs the re-identification script with each
// shell the host has (busybox ash, dash) against a namespaced stand-in
// for a guest: v0 takes the clone's MAC, its udhcpc is started again with
// the new name, the host name and files change; a NIC the guest lacks is
// refused before anything is touched.
func TestReidentifyScriptRuns(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox (the tiny guest's shell and udhcpc)")
	}
	shells := map[string]string{"busybox ash": busybox + " ash"}
	if dash, err := exec.LookPath("dash"); err == nil {
		shells["dash"] = dash
	}
	for _, tc := range []struct {
		name   string
		slots  string
		client string // the host name its udhcpc sends once done
		want   []string
	}{
		{"reidentified", "0 52:54:00:00:00:01 52:54:00:00:00:0a 1 - 52:54:00:00:00:0b", "newname", []string{
			"rc=0", "mac=52:54:00:00:00:0a", "ll6=fe80::5054:ff:fe00:a ", "v4=", "host=newname", "etc-hostname=newname", "hosts=127.0.1.1 newname", "out="}},
		{"NICs unchanged", "1 - 52:54:00:00:00:0b", "oldname", []string{
			"rc=0", "mac=52:54:00:00:00:01", "ll6=fe80::5054:ff:fe00:1 ", "v4=inet 192.0.2.10/24 ", "host=newname", "hosts=127.0.1.1 newname", "out="}},
		{"unknown NIC", "0 52:54:00:00:00:01 52:54:00:00:00:0a 3 52:54:00:00:00:99 52:54:00:00:00:98", "oldname", []string{
			"rc=1", "mac=52:54:00:00:00:01", "v4=inet 192.0.2.10/24 ",
			"out=network[3]: the guest has no interface with the source's MAC 52:54:00:00:00:99 or the clone's 52:54:00:00:00:98"}},
	} {
		for name, sh := range shells {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				testutil.ReidentifyStandIn(t, `printf '%s\n' 0123456789abcdef | $SH -c "$SCRIPT" vmfest-reidentify "$NEW" $SLOTS 2>"$DIR/out"`, tc.client, tc.want,
					"SH="+sh, "SCRIPT="+reidentifyScript, "NEW=newname", "SLOTS="+tc.slots)
			})
		}
	}
}
