package vmfest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmfest/vmfest/disk"
	"github.com/vmfest/vmfest/internal/netnstest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// The test binary re-runs itself as a helper process for crash and
// multi-process tests: VMFEST_HELPER says what to do.
//
// As root the whole binary first re-runs itself inside network and PID
// namespaces of its own (netnstest.Wrap): the host-only bridges, taps,
// dnsmasq and QEMU the tests start, and every packet sent to a guest's
// address, stay inside them and die with them.
func TestMain(m *testing.M) {
	if code, done := netnstest.Wrap(); done {
		os.Exit(code)
	}
	switch os.Getenv("VMFEST_HELPER") {
	case "":
	case "churn":
		os.Exit(helperChurn())
	case "create":
		os.Exit(helperCreate())
	case "setup":
		os.Exit(helperSetup())
	case "nets":
		os.Exit(helperNets())
	case "start":
		os.Exit(helperStart())
	case "volumes":
		os.Exit(helperVolumes())
	case "volume-op":
		os.Exit(helperVolumeOp())
	default:
		fmt.Fprintln(os.Stderr, "unknown helper", os.Getenv("VMFEST_HELPER"))
		os.Exit(2)
	}
	os.Exit(checkBaseImageUnchanged(m.Run))
}

// checkBaseImageUnchanged runs the suite and fails it if the tiny guest's
// base image (which every booting test uses through overlays) changed by
// a single byte.
func checkBaseImageUnchanged(run func() int) int {
	meta := os.Getenv("VMFEST_TEST_IMAGE")
	if meta == "" {
		return run()
	}
	disk := strings.TrimSuffix(meta, ".meta") + ".qcow2"
	before, err := testutil.SumFile(disk)
	if err != nil {
		return run()
	}
	code := run()
	after, err := testutil.SumFile(disk)
	if err != nil || after != before {
		fmt.Fprintf(os.Stderr, "FAIL: the base image %s changed during the suite (%v)\n", disk, err)
		return 1
	}
	return code
}

func helperServer() (*Local, spec.Image) {
	l, err := NewLocal(Config{Home: os.Getenv("VMFEST_HELPER_HOME"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	return l, spec.Image{Location: os.Getenv("VMFEST_HELPER_IMAGE"), Immutable: true}
}

// helperChurn creates and destroys machines as fast as it can until killed.
// With VMFEST_HELPER_CRASH set, it kills itself at that crash point instead.
func helperChurn() int {
	l, img := helperServer()
	var at func(string)
	if point := os.Getenv("VMFEST_HELPER_CRASH"); point != "" {
		at = func(p string) {
			if p == point {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		}
	}
	ctx := context.Background()
	os.Stdout.Write([]byte("ready\n")) // the parent times its kill from here
	for i := 0; ; i++ {
		name := fmt.Sprintf("m%d", i%4)
		if m, err := l.FindMachine(ctx, name); err == nil {
			m.(*localMachine).destroy(ctx, destroyOptions{}, at)
			continue
		}
		l.instance(ctx, name, ImageSpec(img), HardwareModel("micro"), instanceOptions{}, at)
	}
}

// helperSetup installs and removes image models from a local file until
// killed.
func helperSetup() int {
	l, img := helperServer()
	ctx := context.Background()
	os.Stdout.Write([]byte("ready\n"))
	for i := 0; ; i++ {
		id := fmt.Sprintf("m%d", i%3)
		if i%2 == 1 {
			l.RemoveModel(ctx, id)
			continue
		}
		if _, err := l.SetupModel(ctx, img.Location, SetupOptions{ID: id, Replace: true}); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
}

// helperNets creates and removes networks until killed.
func helperNets() int {
	l, _ := helperServer()
	ctx := context.Background()
	os.Stdout.Write([]byte("ready\n"))
	for i := 0; ; i++ {
		name := fmt.Sprintf("n%d", i%3)
		if _, err := l.CreateNetwork(ctx, NetworkSpec{Name: name}); err != nil {
			l.RemoveNetwork(ctx, name)
		}
	}
}

// helperStart starts the machine VMFEST_HELPER_MACHINE and kills itself
// right after the start-up step VMFEST_HELPER_CRASH.
func helperStart() int {
	l, _ := helperServer()
	point := os.Getenv("VMFEST_HELPER_CRASH")
	m := &localMachine{l: l, name: os.Getenv("VMFEST_HELPER_MACHINE")}
	err := m.locked(context.Background(), func(r record, st State) error {
		return m.start(context.Background(), r, func(step string) {
			if step == point {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
		})
	})
	fmt.Fprintln(os.Stderr, "the start ended without reaching", point, err)
	return 1
}

// helperCreate creates one machine named "same": exit 0 if it won, 3 if
// the name was taken.
func helperCreate() int {
	l, img := helperServer()
	_, err := l.Instance(context.Background(), "same", ImageSpec(img), HardwareModel("micro"))
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrExists):
		return 3
	}
	fmt.Fprintln(os.Stderr, err)
	return 1
}

func helperCmd(t *testing.T, what, home, image string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "VMFEST_HELPER="+what, "VMFEST_HELPER_HOME="+home, "VMFEST_HELPER_IMAGE="+image)
	cmd.Stderr = os.Stderr
	return cmd
}

// TestCrashConsistency kills a process that creates and destroys machines
// at random moments, many times, and checks after each kill that the state
// directory reads without error, every machine is whole, and the sweep
// leaves no partial machine or temporary file.
func TestCrashConsistency(t *testing.T) {
	trials := 200
	if testing.Short() {
		trials = 40
	}
	l := newTestServer(t)
	img := blankImage(t, l.Home())
	ctx := context.Background()
	partials := 0
	for trial := 0; trial < trials; trial++ {
		killDuring(t, "churn", l.Home(), img.Location, 20*time.Millisecond)

		// What the crash left, before any sweep.
		partials += len(hiddenEntries(l.home.MachinesPath()))
		// The next command: a fresh server (it sweeps), then a full doctor.
		l2, err := NewLocal(Config{Home: l.Home(), Logger: l.log})
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if _, err := l2.Doctor(ctx, true); err != nil {
			t.Fatalf("trial %d: doctor: %v", trial, err)
		}
		checkWhole(t, l2, trial)
	}
	t.Logf("%d trials; %d partial operations were interrupted and swept", trials, partials)
	if partials == 0 {
		t.Error("no kill landed inside an operation: the test exercised nothing")
	}
}

// TestCrashPoints kills a process at each named point of Instance and
// Destroy in turn, then checks the state directory as TestCrashConsistency
// does: whatever the point, the machine is wholly there or wholly absent.
func TestCrashPoints(t *testing.T) {
	points := []string{"create:mkdir", "create:allocated", "create:overlay", "create:record", "create:renamed",
		"destroy:forgotten", "destroy:trash", "destroy:moved", "destroy:disk", "destroy:removed"}
	l := newTestServer(t)
	img := blankImage(t, l.Home())
	ctx := context.Background()
	for round := 0; round < 3; round++ {
		for _, point := range points {
			cmd := helperCmd(t, "churn", l.Home(), img.Location)
			cmd.Env = append(cmd.Env, "VMFEST_HELPER_CRASH="+point)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
					t.Fatalf("%s: helper ended without reaching the point: %v", point, err)
				}
			case <-time.After(time.Minute):
				cmd.Process.Kill()
				t.Fatalf("%s: the point was never reached", point)
			}
			l2, err := NewLocal(Config{Home: l.Home(), Logger: l.log})
			if err != nil {
				t.Fatalf("%s: %v", point, err)
			}
			if _, err := l2.Doctor(ctx, true); err != nil {
				t.Fatalf("%s: doctor: %v", point, err)
			}
			checkWhole(t, l2, round)
		}
	}
}

// TestStartCrashPoints kills a process starting a machine right after each
// start-up step that leaves something on the host, then checks that Doctor
// repairs what the kill left (a tap QEMU made and nobody plugged in) and
// that the machine is usable: its guest gets its reserved address on the
// host-only network.
func TestStartCrashPoints(t *testing.T) {
	image := tinyImage(t)
	needRoot(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 6*time.Minute)
	for i, c := range []struct {
		step    string
		state   State
		finding string
	}{
		{"set up the networks", PoweredOff, ""},
		{"launch the machine", Running, "unplugged-tap"},
		{"plug the NICs into their networks", Running, ""},
	} {
		t.Run(c.step, func(t *testing.T) {
			name := fmt.Sprintf("sc%d", i)
			m, err := l.Instance(ctx, name, ImageSpec(image), HardwareModel("micro"))
			if err != nil {
				t.Fatal(err)
			}
			cmd := helperCmd(t, "start", l.Home(), image.Location)
			cmd.Env = append(cmd.Env, "VMFEST_HELPER_CRASH="+c.step, "VMFEST_HELPER_MACHINE="+name)
			err = cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("helper ended without reaching the step: %v", err)
			}
			expectState(t, m, c.state)
			found, err := l.Doctor(ctx, true)
			if err != nil {
				t.Fatal(err)
			}
			var kinds []string
			for _, f := range found {
				if f.Machine == name {
					kinds = append(kinds, f.Kind)
					if !f.Fixed {
						t.Errorf("not fixed: %+v", f)
					}
				}
			}
			if want := c.finding; (want == "" && len(kinds) > 0) || (want != "" && (len(kinds) != 1 || kinds[0] != want)) {
				t.Fatalf("doctor found %v, want %q", kinds, want)
			}
			if c.state == PoweredOff {
				if err := m.Start(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := m.WaitReady(ctx); err != nil {
				log, _ := m.ConsoleLog(ctx)
				t.Fatalf("%v\nconsole:\n%s", err, log)
			}
			ictx, cancel := context.WithTimeout(ctx, 90*time.Second)
			defer cancel()
			leaseIP(ictx, t, m, 0)
			if err := m.PowerDown(ctx); err != nil {
				t.Fatal(err)
			}
			if err := m.Destroy(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// killDuring runs a helper until it is ready, lets it work for a random
// moment of up to maxDelay, and kills it.
func killDuring(t *testing.T, what, home, image string, maxDelay time.Duration) {
	t.Helper()
	cmd := helperCmd(t, what, home, image)
	ready, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := ready.Read(make([]byte, 6)); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the %s helper did not start: %v", what, err)
	}
	time.Sleep(time.Duration(rand.Int64N(int64(maxDelay))))
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
}

// hiddenEntries lists the hidden entries of dir.
func hiddenEntries(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestCrashSetupModel kills a process installing and removing image models
// at random moments: every listed model reads back whole, and the sweep
// leaves nothing half-installed in the registry.
func TestCrashSetupModel(t *testing.T) {
	trials := 60
	if testing.Short() {
		trials = 15
	}
	l := newTestServer(t)
	src := filepath.Join(t.TempDir(), "src.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", src, "64M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 8M", src).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	ctx := context.Background()
	seen, interrupted := 0, 0
	for trial := 0; trial < trials; trial++ {
		killDuring(t, "setup", l.Home(), src, 300*time.Millisecond)
		seen += len(hiddenEntries(l.home.ImageModelsPath()))
		if work, _ := os.ReadDir(filepath.Join(l.Home(), store.CacheDir)); len(work) > 0 {
			interrupted++ // a setup's work (kept for resuming) was cut short
		}
		l2, err := NewLocal(Config{Home: l.Home(), Logger: l.log})
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if _, err := l2.Doctor(ctx, true); err != nil {
			t.Fatalf("trial %d: doctor: %v", trial, err)
		}
		if left := hiddenEntries(l.home.ImageModelsPath()); len(left) > 0 {
			t.Fatalf("trial %d: left after the sweep: %v", trial, left)
		}
		models, err := l2.Models(ctx)
		if err != nil {
			t.Fatalf("trial %d: models: %v", trial, err)
		}
		for _, m := range models {
			data, err := os.ReadFile(m.Spec.Location)
			if err != nil || len(data) < 4 || string(data[:4]) != disk.QCOW2Magic {
				t.Fatalf("trial %d: model %s has no whole disk (%d bytes, %v)", trial, m.ID, len(data), err)
			}
		}
	}
	// After all that, a setup still works.
	if _, err := l.SetupModel(ctx, src, SetupOptions{ID: "after", Replace: true}); err != nil {
		t.Fatalf("setup after the crashes: %v", err)
	}
	t.Logf("%d trials; %d kills cut a setup short (its work kept in cache/); %d half-done registry entries were swept", trials, interrupted, seen)
}

// TestCrashNetworks kills a process creating and removing networks at
// random moments: the networks list reads without error and the sweep
// leaves no half-created or half-removed network.
func TestCrashNetworks(t *testing.T) {
	trials := 60
	if testing.Short() {
		trials = 15
	}
	l := newTestServer(t)
	ctx := context.Background()
	netDir := filepath.Join(l.Home(), store.NetworksDir)
	seen := 0
	for trial := 0; trial < trials; trial++ {
		killDuring(t, "nets", l.Home(), "", 20*time.Millisecond)
		seen += len(hiddenEntries(netDir))
		l2, err := NewLocal(Config{Home: l.Home(), Logger: l.log})
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if _, err := l2.Doctor(ctx, true); err != nil {
			t.Fatalf("trial %d: doctor: %v", trial, err)
		}
		if left := hiddenEntries(netDir); len(left) > 0 {
			t.Fatalf("trial %d: left after the sweep: %v", trial, left)
		}
		if _, err := l2.Networks(ctx); err != nil {
			t.Fatalf("trial %d: networks: %v", trial, err)
		}
	}
	t.Logf("%d trials; %d half-done creates or removals were swept", trials, seen)
}

// checkWhole asserts every machine is wholly there and nothing else is.
func checkWhole(t *testing.T, l *Local, trial int) {
	t.Helper()
	ctx := context.Background()
	entries, err := os.ReadDir(l.home.MachinesPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Fatalf("trial %d: %s left after the sweep", trial, e.Name())
		}
		inner, _ := os.ReadDir(filepath.Join(l.home.MachinesPath(), e.Name()))
		for _, f := range inner {
			if strings.Contains(f.Name(), ".tmp-") {
				t.Fatalf("trial %d: temporary file %s/%s left", trial, e.Name(), f.Name())
			}
		}
	}
	ms, err := l.Machines(ctx)
	if err != nil {
		t.Fatalf("trial %d: %v", trial, err)
	}
	for _, m := range ms {
		info, err := m.Info(ctx)
		if err != nil {
			t.Fatalf("trial %d: machine %s: %v", trial, m.Name(), err)
		}
		data, err := os.ReadFile(info.Disk)
		if err != nil || len(data) < 4 || string(data[:4]) != disk.QCOW2Magic {
			t.Fatalf("trial %d: machine %s has no whole overlay (%d bytes, %v)", trial, m.Name(), len(data), err)
		}
	}
}

// TestCreateSameNameAcrossProcesses: many processes create one name at
// once; exactly one wins.
func TestCreateSameNameAcrossProcesses(t *testing.T) {
	l := newTestServer(t)
	img := blankImage(t, l.Home())
	var cmds []*exec.Cmd
	for i := 0; i < 8; i++ {
		cmd := helperCmd(t, "create", l.Home(), img.Location)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	wins, taken := 0, 0
	for _, cmd := range cmds {
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
			wins++
		case errors.As(err, &ee) && ee.ExitCode() == 3:
			taken++
		default:
			t.Errorf("helper: %v", err)
		}
	}
	if wins != 1 || taken != 7 {
		t.Fatalf("wins=%d taken=%d", wins, taken)
	}
	checkWhole(t, l, 0)
}

// TestCorruptRecordDoesNotStopListing: a damaged machine.json is reported
// by name; the other machines still list.
func TestCorruptRecordDoesNotStopListing(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	img := blankImage(t, l.Home())
	for _, n := range []string{"a", "b", "c"} {
		if _, err := l.Instance(ctx, n, ImageSpec(img), HardwareModel("micro")); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(l.home.MachinePath("b"), store.MachineFile), []byte("{not json"), 0o644)
	ms, err := l.Machines(ctx)
	if err != nil || len(ms) != 3 {
		t.Fatalf("machines = %v, %v", ms, err)
	}
	bad := 0
	for _, m := range ms {
		_, err := m.Info(ctx)
		if m.Name() == "b" {
			if err == nil || !strings.Contains(err.Error(), "machine b") || !strings.Contains(err.Error(), "corrupt") {
				t.Fatalf("b: %v", err)
			}
			bad++
		} else if err != nil {
			t.Fatalf("%s: %v", m.Name(), err)
		}
	}
	found, err := l.Doctor(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Kind != "corrupt-record" || found[0].Machine != "b" || found[0].Fixed {
		t.Fatalf("doctor = %+v", found)
	}
}

// crashAt returns the crash hook of a helper: it kills the process at the
// point VMFEST_HELPER_CRASH names (nil when none is named).
func crashAt() func(string) {
	point := os.Getenv("VMFEST_HELPER_CRASH")
	if point == "" {
		return nil
	}
	return func(p string) {
		if p == point {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
}

// crashVolumeSize is the size of the volumes the crash helpers make.
const crashVolumeSize = 64 << 20

// helperVolumes creates, attaches, moves, detaches and removes volumes
// v0-v2 among the powered-off machines m0 and m1 until killed.
func helperVolumes() int {
	l, _ := helperServer()
	at := crashAt()
	ctx := context.Background()
	os.Stdout.Write([]byte("ready\n"))
	for i := 0; ; i++ {
		v := fmt.Sprintf("v%d", i%3)
		u, attached := l.volumeUsers()[v]
		_, err := l.readVolume(v)
		switch {
		case err != nil:
			l.createVolume(ctx, VolumeSpec{Name: v, Size: crashVolumeSize}, at)
		case attached:
			(&localMachine{l: l, name: u.machine}).Detach(ctx, Attachment{Volume: v})
		case i%2 == 0:
			(&localMachine{l: l, name: fmt.Sprintf("m%d", i/3%2)}).attach(ctx, Attachment{Volume: v}, at)
		default:
			l.removeVolume(ctx, v, at)
		}
	}
}

// helperVolumeOp runs one volume operation, VMFEST_HELPER_OP (create,
// remove or attach) of volume v on machine m, and kills itself at the
// point VMFEST_HELPER_CRASH.
func helperVolumeOp() int {
	l, _ := helperServer()
	at := crashAt()
	ctx := context.Background()
	var err error
	switch op := os.Getenv("VMFEST_HELPER_OP"); op {
	case "create":
		_, err = l.createVolume(ctx, VolumeSpec{Name: "v", Size: crashVolumeSize}, at)
	case "remove":
		err = l.removeVolume(ctx, "v", at)
	case "attach":
		_, err = (&localMachine{l: l, name: "m"}).attach(ctx, Attachment{Volume: "v"}, at)
	default:
		err = fmt.Errorf("unknown operation %q", op)
	}
	fmt.Fprintln(os.Stderr, "the operation ended without reaching", os.Getenv("VMFEST_HELPER_CRASH"), err)
	return 1
}

// runUntilKilled runs cmd and fails the test unless it dies of SIGKILL
// (its crash point) within a minute.
func runUntilKilled(t *testing.T, cmd *exec.Cmd, point string) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("%s: helper ended without reaching the point: %v", point, err)
		}
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s: the point was never reached", point)
	}
}

// TestVolumeCrashPoints kills a process at each named point of
// CreateVolume, RemoveVolume and Attach in turn. Whatever the point, after
// the sweep the volume is whole or absent, the machine holds it or not
// (and then it is free), and the next operation on it works.
func TestVolumeCrashPoints(t *testing.T) {
	l := newTestServer(t)
	img := blankImage(t, l.Home())
	ctx := ctxTimeout(t, 2*time.Minute)
	m, err := l.Instance(ctx, "m", ImageSpec(img), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		op, point string
		// before brings the state to where op starts: the volume v absent
		// (create), free (remove, attach).
		exists, attached bool
	}{
		{"create", "volume-create:mkdir", false, false},
		{"create", "volume-create:disk", false, false},
		{"create", "volume-create:record", false, false},
		{"create", "volume-create:renamed", true, false},
		{"remove", "volume-remove:moved", false, false},
		{"remove", "volume-remove:removed", false, false},
		{"attach", "attach:claimed", true, false},
		{"attach", "attach:written", true, true},
	} {
		t.Run(c.point, func(t *testing.T) {
			// The state op starts from: no volume for create, a free one
			// otherwise.
			if _, err := m.Detach(ctx, Attachment{Volume: "v"}); err != nil && !errors.Is(err, ErrNotFound) {
				t.Fatal(err)
			}
			_, err := l.Volume(ctx, "v")
			switch {
			case c.op == "create" && err == nil:
				if err := l.RemoveVolume(ctx, "v"); err != nil {
					t.Fatal(err)
				}
			case c.op != "create" && err != nil:
				if _, err := l.CreateVolume(ctx, VolumeSpec{Name: "v", Size: crashVolumeSize}); err != nil {
					t.Fatal(err)
				}
			}

			cmd := helperCmd(t, "volume-op", l.Home(), img.Location)
			cmd.Env = append(cmd.Env, "VMFEST_HELPER_OP="+c.op, "VMFEST_HELPER_CRASH="+c.point)
			runUntilKilled(t, cmd, c.point)

			l2, err := NewLocal(Config{Home: l.Home(), Logger: l.log})
			if err != nil {
				t.Fatal(err)
			}
			found, err := l2.Doctor(ctx, true)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range found {
				if !f.Fixed {
					t.Errorf("doctor found what it could not fix: %+v", f)
				}
			}
			checkVolumesWhole(t, l2, c.point)
			checkWhole(t, l2, 0)
			v, err := l2.Volume(ctx, "v")
			if exists := err == nil; exists != c.exists {
				t.Fatalf("the volume exists: %v (%v), want %v", exists, err, c.exists)
			}
			if attached := v.Machine == "m"; attached != c.attached {
				t.Fatalf("the volume is attached to %q, want attached to m: %v", v.Machine, c.attached)
			}
			info, err := m.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if held := len(info.Media) > 0; held != c.attached {
				t.Fatalf("the machine's media = %+v, want attached: %v", info.Media, c.attached)
			}

			// The next operation works from what the crash left.
			switch {
			case !c.exists:
				if _, err := l2.CreateVolume(ctx, VolumeSpec{Name: "v", Size: crashVolumeSize}); err != nil {
					t.Fatalf("create after the crash: %v", err)
				}
			case !c.attached:
				if _, err := m.Attach(ctx, Attachment{Volume: "v"}); err != nil {
					t.Fatalf("attach after the crash: %v", err)
				}
			default:
				if err := l2.RemoveVolume(ctx, "v"); !errors.Is(err, ErrWrongState) {
					t.Fatalf("remove an attached volume after the crash: %v, want it refused", err)
				}
			}
		})
	}
}

// TestCrashVolumes kills a process that creates, attaches, moves and
// removes volumes at random moments, many times: after each kill and the
// sweep every volume is whole, every volume a machine's slot names exists,
// and no volume is in two machines' slots.
func TestCrashVolumes(t *testing.T) {
	trials := 60
	if testing.Short() {
		trials = 15
	}
	l := newTestServer(t)
	img := blankImage(t, l.Home())
	ctx := context.Background()
	for _, n := range []string{"m0", "m1"} {
		if _, err := l.Instance(ctx, n, ImageSpec(img), HardwareModel("micro")); err != nil {
			t.Fatal(err)
		}
	}
	partial, attached := 0, 0
	for trial := 0; trial < trials; trial++ {
		killDuring(t, "volumes", l.Home(), img.Location, 100*time.Millisecond)
		partial += len(hiddenEntries(l.home.VolumesPath()))
		l2, err := NewLocal(Config{Home: l.Home(), Logger: l.log})
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if _, err := l2.Doctor(ctx, true); err != nil {
			t.Fatalf("trial %d: doctor: %v", trial, err)
		}
		checkVolumesWhole(t, l2, fmt.Sprintf("trial %d", trial))
		checkWhole(t, l2, trial)
		attached += len(l2.volumeUsers())
	}
	t.Logf("%d trials; %d half-made or half-removed volumes were swept; %d volumes were found attached after a kill", trials, partial, attached)
	if attached == 0 {
		t.Error("no kill left a volume attached: the helper never got as far as attaching")
	}
}

// checkVolumesWhole asserts, after a sweep, that volumes/ holds whole
// volumes only (a record and a qcow2 disk of the recorded size), that
// every volume a machine's slot names exists, and that none is in two
// machines' slots.
func checkVolumesWhole(t *testing.T, l *Local, when string) {
	t.Helper()
	ctx := context.Background()
	if left := hiddenEntries(l.home.VolumesPath()); len(left) > 0 {
		t.Fatalf("%s: left after the sweep: %v", when, left)
	}
	entries, err := os.ReadDir(l.home.VolumesPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		vr, err := l.readVolume(e.Name())
		if err != nil {
			t.Fatalf("%s: volume %s is not whole: %v", when, e.Name(), err)
		}
		size, err := disk.New("").VirtualSize(ctx, l.home.VolumeDisk(vr.Name), spec.DiskFormatQCOW2)
		if err != nil || size != int64(vr.Size) {
			t.Fatalf("%s: volume %s's disk: %d bytes, %v; want a qcow2 of %d", when, vr.Name, size, err, int64(vr.Size))
		}
	}
	names, err := l.machineNames()
	if err != nil {
		t.Fatal(err)
	}
	holder := map[string]string{}
	for _, n := range names {
		r, err := l.readRecord(n)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		for _, pm := range r.media() {
			v := pm.dev.Volume
			if v == "" {
				continue
			}
			if other, ok := holder[v]; ok {
				t.Fatalf("%s: volume %s is in the slots of machines %s and %s", when, v, other, n)
			}
			holder[v] = n
			if _, err := l.readVolume(v); err != nil {
				t.Fatalf("%s: machine %s's slot %s names volume %s: %v", when, n, pm.at, v, err)
			}
		}
	}
}
