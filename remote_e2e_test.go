package vmfest_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/internal/lifecycletest"
	"github.com/vmfest/vmfest/spec"
)

// serve runs the HTTP API over l on a Unix socket in l's state directory,
// as `vmfest serve` does, and returns a Remote connected to it. Cleanup
// stops the server.
func serve(t *testing.T, l *vmfest.Local, allow ...string) *vmfest.Remote {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := api.New(ctx, l, api.Config{Home: l.Home(), AllowPaths: allow, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(l.Home(), api.SocketFile)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, api.Listen{Unix: sock}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	// Serve creates the socket before accepting; wait for it to exist.
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-served:
			t.Fatalf("serve ended: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	r, err := vmfest.Connect("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestTutorialRemote runs the tutorial through `vmfest serve` on a Unix
// socket: the same body as TestTutorial, against a Remote.
func TestTutorialRemote(t *testing.T) {
	image := vmfest.TinyImage(t)
	l := vmfest.NewTestServer(t)
	r := serve(t, l, filepath.Dir(image.Location))
	lifecycletest.Tutorial(t, r, image, vmfest.HardwareModel("micro"), nil)
}

// natOnly is hardware that needs no host network (micro has a host-only NIC).
func natOnly() vmfest.Hardware {
	return vmfest.HardwareSpec(spec.Hardware{MemorySize: 128, CPUCount: 1, Network: []spec.NIC{{AttachmentType: "nat"}}})
}

// TestRemoteErrors checks that a Remote reports the errors a Local does, as
// the same values (errors.Is, *StateError), without booting a guest.
func TestRemoteErrors(t *testing.T) {
	l := vmfest.NewTestServer(t)
	dir := t.TempDir()
	blank := vmfest.BlankImage(t, dir)
	r := serve(t, l, dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	m, err := r.Instance(ctx, "e1", vmfest.ImageSpec(blank), natOnly())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Instance(ctx, "e1", vmfest.ImageSpec(blank), natOnly()); !errors.Is(err, vmfest.ErrExists) {
		t.Errorf("second create: %v, want ErrExists", err)
	}
	if _, err := r.FindMachine(ctx, "nope"); !errors.Is(err, vmfest.ErrNotFound) {
		t.Errorf("find nope: %v, want ErrNotFound", err)
	}
	err = m.Pause(ctx)
	var se *vmfest.StateError
	if !errors.As(err, &se) || se.State != vmfest.PoweredOff || se.Op != "pause" || !errors.Is(err, vmfest.ErrWrongState) {
		t.Errorf("pause powered-off: %#v, want a *StateError", err)
	}
	local, _ := l.FindMachine(ctx, "e1")
	if lerr := local.Pause(ctx); lerr == nil || err == nil || lerr.Error() != err.Error() {
		t.Errorf("messages differ:\nlocal:  %v\nremote: %v", lerr, err)
	}
	for _, bad := range []string{"a/b", "..", "x\x00y", "", strings.Repeat("n", 64)} {
		if _, err := r.Instance(ctx, bad, vmfest.ImageSpec(blank), natOnly()); !errors.Is(err, vmfest.ErrInvalid) {
			t.Errorf("create %q: %v, want ErrInvalid", bad, err)
		}
	}
	// The socket's own user names any file, as with a Local (a token
	// holder may not: api's TestForbiddenPaths).
	outside := vmfest.BlankImage(t, t.TempDir())
	if m2, err := r.Instance(ctx, "e2", vmfest.ImageSpec(outside), natOnly()); err != nil {
		t.Errorf("create from outside the allowed paths through the own socket: %v", err)
	} else if err := m2.Destroy(ctx); err != nil {
		t.Error(err)
	}
	if _, err := r.Instance(ctx, "e3", vmfest.ImageSpec(spec.Image{Location: "relative.raw", Immutable: true}), natOnly()); !errors.Is(err, vmfest.ErrInvalid) && !errors.Is(err, fs.ErrPermission) {
		t.Errorf("create from a relative path: %v", err)
	}

	// Hardware models read the same either way.
	ln, err1 := l.HardwareModels(ctx)
	rn, err2 := r.HardwareModels(ctx)
	if err1 != nil || err2 != nil || !reflect.DeepEqual(ln, rn) {
		t.Errorf("hardware models: local %v %v, remote %v %v", ln, err1, rn, err2)
	}
	lh, err1 := l.HardwareModel(ctx, "small")
	rh, err2 := r.HardwareModel(ctx, "small")
	if err1 != nil || err2 != nil || !reflect.DeepEqual(lh, rh) {
		t.Errorf("hardware model small: local %+v %v, remote %+v %v", lh, err1, rh, err2)
	}

	// Info matches Local's.
	li, err1 := local.Info(ctx)
	ri, err2 := m.Info(ctx)
	if err1 != nil || err2 != nil || !li.Created.Equal(ri.Created) {
		t.Fatalf("info: %v %v", err1, err2)
	}
	ri.Created = li.Created
	if !reflect.DeepEqual(li, ri) {
		t.Errorf("info differs:\nlocal:  %+v\nremote: %+v", li, ri)
	}

	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if ms, err := r.Machines(ctx); err != nil || len(ms) != 0 {
		t.Errorf("machines after destroy: %v, %v", ms, err)
	}
}

// TestRemoteOperations drives a machine whose disk is blank (QEMU runs,
// no guest boots) through the operations: a stop the guest never answers
// times out as ErrTimeout and leaves it running; wait-ready is bounded by
// the caller's context; power-down ends it.
func TestRemoteOperations(t *testing.T) {
	if testing.Short() {
		t.Skip("runs QEMU")
	}
	l := vmfest.NewTestServer(t)
	dir := t.TempDir()
	r := serve(t, l, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := r.Instance(ctx, "ops", vmfest.ImageSpec(vmfest.BlankImage(t, dir)), natOnly())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The NAT NIC's address (its SSH forward) and the console read the same
	// through the server.
	local, err := l.FindMachine(ctx, "ops")
	if err != nil {
		t.Fatal(err)
	}
	la, err1 := local.IP(ctx, 0)
	ra, err2 := m.IP(ctx, 0)
	if err1 != nil || err2 != nil || la != ra || ra.Port == 0 {
		t.Errorf("ip: local %+v %v, remote %+v %v", la, err1, ra, err2)
	}
	if _, err := m.IP(ctx, 5); !errors.Is(err, vmfest.ErrInvalid) {
		t.Errorf("ip of slot 5: %v, want ErrInvalid", err)
	}
	lc, err1 := local.ConsoleLog(ctx)
	rc, err2 := m.ConsoleLog(ctx)
	if err1 != nil || err2 != nil || !bytes.HasPrefix(rc, lc) {
		t.Errorf("console: local %d bytes %v, remote %d bytes %v", len(lc), err1, len(rc), err2)
	}
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	err = m.Stop(sctx)
	scancel()
	if !errors.Is(err, vmfest.ErrTimeout) {
		t.Fatalf("stop of a guest with no OS: %v, want ErrTimeout", err)
	}
	if st, err := m.State(ctx); err != nil || st != vmfest.Running {
		t.Fatalf("after a timed-out stop: %s, %v; want running", st, err)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Second)
	err = m.WaitReady(wctx)
	wcancel()
	if !errors.Is(err, vmfest.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait-ready with no agent: %v, want a timeout", err)
	}
	// A canceled caller cancels its operation on the server.
	cctx, ccancel := context.WithCancel(ctx)
	go func() { time.Sleep(200 * time.Millisecond); ccancel() }()
	if err := m.WaitReady(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled wait-ready: %v", err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.State(ctx); st != vmfest.Paused {
		t.Fatalf("state %s, want paused", st)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRemoteSetupOptionsComplete fails when SetupOptions gains a field the
// wire format does not carry (Progress travels as the operation's
// progress).
func TestRemoteSetupOptionsComplete(t *testing.T) {
	wireFields := map[string]bool{}
	wt := reflect.TypeOf(wire.SetupModel{})
	for i := range wt.NumField() {
		wireFields[wt.Field(i).Name] = true
	}
	ot := reflect.TypeOf(vmfest.SetupOptions{})
	for i := range ot.NumField() {
		f := ot.Field(i).Name
		if ot.Field(i).Tag.Get("json") == "-" {
			continue // Progress travels as the operation's progress; FetchPolicy is the server's own
		}
		if !wireFields[f] {
			t.Errorf("SetupOptions.%s is not in wire.SetupModel: a Remote would drop it", f)
		}
	}
}

// TestRemoteSetupModel installs an image model through the server from a
// web server on loopback and from a file in an allowed directory, with
// progress reported to the caller, then uses and removes it.
func TestRemoteSetupModel(t *testing.T) {
	_, dir, r, ctx := served(t)

	raw := make([]byte, 4<<20)
	copy(raw[1<<20:], strings.Repeat("vmfest", 1000))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/disk.raw.gz" {
			http.NotFound(w, req)
			return
		}
		http.ServeContent(w, req, "disk.raw.gz", time.Time{}, bytes.NewReader(gz.Bytes()))
	}))
	defer web.Close()

	var reports []vmfest.Progress
	m, err := r.SetupModel(ctx, web.URL+"/disk.raw.gz", vmfest.SetupOptions{ID: "web", Meta: &spec.Image{OSFamily: "none"}, Progress: func(p vmfest.Progress) {
		reports = append(reports, p)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != "web" || m.VirtualSize != 4<<20 || m.Spec.OSFamily != "none" {
		t.Errorf("model %+v", m)
	}
	if len(reports) == 0 {
		t.Error("no progress reported")
	}
	got, err := r.Model(ctx, "web")
	if err != nil || got.ID != "web" || got.SHA256 != m.SHA256 {
		t.Errorf("model web: %+v, %v", got, err)
	}
	if _, err := r.SetupModel(ctx, web.URL+"/disk.raw.gz", vmfest.SetupOptions{ID: "web"}); !errors.Is(err, vmfest.ErrExists) {
		t.Errorf("setup again: %v, want ErrExists", err)
	}
	if _, err := r.SetupModel(ctx, web.URL+"/missing.raw", vmfest.SetupOptions{ID: "gone"}); err == nil {
		t.Error("setup of a missing URL succeeded")
	}

	path := filepath.Join(dir, "local.raw")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetupModel(ctx, path, vmfest.SetupOptions{ID: "file"}); err != nil {
		t.Fatal(err)
	}
	ms, err := r.Models(ctx)
	if err != nil || len(ms) != 2 {
		t.Fatalf("models: %+v, %v", ms, err)
	}

	vm, err := r.Instance(ctx, "onmodel", vmfest.ImageModel("web"), natOnly())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.RemoveModel(ctx, "web"); err == nil {
		t.Error("removed a model in use")
	}
	if err := vm.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"web", "file"} {
		if err := r.RemoveModel(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Model(ctx, "web"); !errors.Is(err, vmfest.ErrNotFound) {
		t.Errorf("removed model: %v, want ErrNotFound", err)
	}
}

// TestConnectURLs checks which server URLs Connect takes.
func TestConnectURLs(t *testing.T) {
	for _, tc := range []struct {
		url string
		ok  bool
	}{
		{"unix:///run/vmfest.sock", true},
		{"http://127.0.0.1:18083", true},
		{"http://localhost", true},
		{"https://vmhost.example:443/", true},
		{"unix://relative.sock", false},
		{"unix:relative.sock", false},
		{"http://", false},
		{"https://host:1/v1", false},
		{"ftp://host", false},
		{"host:18083", false},
		{"", false},
	} {
		_, err := vmfest.Connect(tc.url)
		if (err == nil) != tc.ok {
			t.Errorf("Connect(%q): %v, want ok=%v", tc.url, err, tc.ok)
		}
		if err != nil && !errors.Is(err, vmfest.ErrInvalid) {
			t.Errorf("Connect(%q): %v does not wrap ErrInvalid", tc.url, err)
		}
	}
}

// TestTutorial is the lifecycle suite on the QEMU driver, in process.
func TestTutorial(t *testing.T) {
	image := vmfest.TinyImage(t)
	lifecycletest.Tutorial(t, vmfest.NewTestServer(t), image, vmfest.HardwareModel("micro"), func(info vmfest.Info) {
		if info.Driver != "qemu" || info.PID == 0 {
			t.Errorf("info = %+v", info)
		}
	})
}

// TestRemoteDestroyKeepDisk: KeepDisk travels through the API.
func TestRemoteDestroyKeepDisk(t *testing.T) {
	_, dir, r, ctx := served(t)
	for _, keep := range []bool{true, false} {
		disk := filepath.Join(dir, "own.raw")
		if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := r.Instance(ctx, "own", vmfest.ImageSpec(spec.Image{Location: disk}), natOnly())
		if err != nil {
			t.Fatal(err)
		}
		var opts []vmfest.DestroyOption
		if keep {
			opts = append(opts, vmfest.KeepDisk())
		}
		if err := m.Destroy(ctx, opts...); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(disk); (err == nil) != keep {
			t.Fatalf("keep-disk %v: the disk's stat says %v", keep, err)
		}
	}
}

// TestRemoteLabelsAndUserData: labels, relabelling, the list filter and a
// user-data travel through the API.
func TestRemoteLabelsAndUserData(t *testing.T) {
	l := vmfest.NewTestServer(t)
	dir := t.TempDir()
	blank := vmfest.BlankImage(t, dir)
	r := serve(t, l, dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ci := blank
	ci.CloudInit = true
	m, err := r.Instance(ctx, "web", vmfest.ImageSpec(ci), natOnly(), vmfest.WithLabels(map[string]string{"role": "web"}), vmfest.WithUserData([]byte("#!/bin/sh\necho hi\n")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Instance(ctx, "db", vmfest.ImageSpec(blank), natOnly(), vmfest.WithLabels(map[string]string{"role": "db"})); err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil || info.Labels["role"] != "web" || !info.UserData {
		t.Fatalf("info = %+v, %v", info, err)
	}
	if err := m.Relabel(ctx, map[string]string{"env": "prod"}, []string{"role"}); err != nil {
		t.Fatal(err)
	}
	if info, _ := m.Info(ctx); !reflect.DeepEqual(info.Labels, map[string]string{"env": "prod"}) {
		t.Fatalf("labels after relabel = %v", info.Labels)
	}
	if err := m.Relabel(ctx, map[string]string{"bad key": "1"}, nil); !errors.Is(err, vmfest.ErrInvalid) {
		t.Fatalf("relabel with a bad key: %v", err)
	}
	if _, err := r.Instance(ctx, "x", vmfest.ImageSpec(blank), natOnly(), vmfest.WithUserData([]byte("#!/bin/sh\n"))); !errors.Is(err, vmfest.ErrInvalid) {
		t.Fatalf("user-data on an image without cloud-init: %v", err)
	}
	// The list filter, over plain HTTP.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", filepath.Join(l.Home(), api.SocketFile))
	}}}
	resp, err := hc.Get("http://vmfest/v1/machines?label=role=db")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list []vmfest.Info
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || len(list) != 1 || list[0].Name != "db" {
		t.Fatalf("?label=role=db: %+v, %v", list, err)
	}
}

// TestRemoteSet: Set travels through the API, refusals included.
func TestRemoteSet(t *testing.T) {
	_, dir, r, ctx := served(t)
	m, err := r.Instance(ctx, "s", vmfest.ImageSpec(vmfest.BlankImage(t, dir)), natOnly())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Set(ctx, vmfest.Change{MemorySize: 192, DiskSize: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	if info, err := m.Info(ctx); err != nil || info.HardwareSpec.MemorySize != 192 || info.HardwareSpec.DiskSize != 4<<20 {
		t.Fatalf("after Set: %+v, %v", info.HardwareSpec, err)
	}
	if err := m.Set(ctx, vmfest.Change{DiskSize: 2 << 20}); !errors.Is(err, vmfest.ErrInvalid) || !strings.Contains(err.Error(), "disk-size") {
		t.Fatalf("shrink through the API: %v", err)
	}
}

// served is a fresh Local served on a Unix socket with a directory it
// allows, a Remote connected to it, and a context bounded at a minute.
func served(t *testing.T) (*vmfest.Local, string, *vmfest.Remote, context.Context) {
	t.Helper()
	l := vmfest.NewTestServer(t)
	dir := t.TempDir()
	r := serve(t, l, dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return l, dir, r, ctx
}
