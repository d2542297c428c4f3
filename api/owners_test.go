package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/spec"
)

// TestOwnerGuardBodies: a create gets the caller's uid as its owner label;
// a caller who is not an admin cannot give that label at create nor move
// it by relabelling, nor remove shared objects; an admin can; a request
// without peer credentials is refused.
func TestOwnerGuardBodies(t *testing.T) {
	e := newEnv(t)
	s, err := New(context.Background(), e.local, Config{Home: e.home, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const adminGID = 4242
	var seen string
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		seen = string(data)
	})
	h := s.ownerGuard(next, adminGID)
	member := &peer{cred: unix.Ucred{Uid: 1001, Gid: 1001}, groups: []uint32{77}}
	admin := &peer{cred: unix.Ucred{Uid: 1002, Gid: 1002}, groups: []uint32{77, adminGID}}
	for _, tc := range []struct {
		name, method, path, body string
		who                      *peer
		status                   int
		seen                     string // in the body passed on
	}{
		{"create stamped", "POST", "/v1/machines", `{"name":"m","labels":{"a":"b"}}`, member, 200, `"vmfest/owner":"1001"`},
		{"create without labels", "POST", "/v1/machines", `{"name":"m"}`, member, 200, `"vmfest/owner":"1001"`},
		{"create giving the owner", "POST", "/v1/machines", `{"name":"m","labels":{"vmfest/owner":"0"}}`, member, 403, ""},
		{"admin creates for another", "POST", "/v1/machines", `{"name":"m","labels":{"vmfest/owner":"1001"}}`, admin, 200, `"vmfest/owner":"1001"`},
		{"bad body passed on", "POST", "/v1/machines", `{"name":`, member, 200, `{"name":`},
		{"remove a network", "DELETE", "/v1/networks/n0", "", member, 403, ""},
		{"add hardware", "PUT", "/v1/hardware/mine", "{}", member, 200, "{}"},
		{"remove hardware", "DELETE", "/v1/hardware/mine", "", member, 403, ""},
		{"create a volume stamped", "POST", "/v1/volumes", `{"name":"v","size":1048576}`, member, 200, `"vmfest/owner":"1001"`},
		{"admin removes a volume", "DELETE", "/v1/volumes/v", "", admin, 200, ""},
		{"create a network", "POST", "/v1/networks", `{"name":"n1"}`, member, 200, `{"name":"n1"}`},
		{"admin moves an owner", "POST", "/v1/machines/m/labels", `{"set":{"vmfest/owner":"1001"}}`, admin, 200, `{"set":{"vmfest/owner":"1001"}}`},
		{"no credentials", "GET", "/v1/machines", "", nil, 403, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen = ""
			r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tc.who != nil {
				r = r.WithContext(context.WithValue(r.Context(), peerKey{}, tc.who))
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.status {
				t.Fatalf("status %d %s, want %d", w.Code, w.Body, tc.status)
			}
			if tc.status == 403 {
				var body struct{ Error, Code string }
				if json.Unmarshal(w.Body.Bytes(), &body) != nil || body.Code != "forbidden" || body.Error == "" {
					t.Errorf("refusal body %s", w.Body)
				}
				return
			}
			if !strings.Contains(seen, tc.seen) {
				t.Errorf("passed on %s, want it to hold %s", seen, tc.seen)
			}
		})
	}
}

// TestOpenAs: a file is opened with the peer's rights, on a thread of its
// own: the server's own rights are untouched afterwards.
func TestOpenAs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it takes another uid's file rights")
	}
	dir, err := os.MkdirTemp("", "vmfest-openas") // t.TempDir's parent is 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	private := filepath.Join(dir, "private")
	public := filepath.Join(dir, "public")
	os.WriteFile(private, nil, 0o600)
	os.WriteFile(public, nil, 0o644)
	os.Chmod(dir, 0o755)
	p := &peer{cred: unix.Ucred{Uid: 65530, Gid: 65530}}
	for _, tc := range []struct {
		path  string
		write bool
		ok    bool
	}{
		{private, false, false},
		{public, false, true},
		{public, true, false},
		{filepath.Join(dir, "missing"), true, true}, // left to the handler
	} {
		if err := openAs(p, tc.path, tc.write); (err == nil) != tc.ok {
			t.Errorf("openAs(%s, write %v) = %v, want ok %v", tc.path, tc.write, err, tc.ok)
		}
	}
	for range 20 { // on every thread the runtime may pick
		f, err := os.OpenFile(private, os.O_RDWR, 0)
		if err != nil {
			t.Fatalf("the server lost its own rights: %v", err)
		}
		f.Close()
	}
}

// asPeer is a Remote client of e's API whose requests come from who, as
// a shared socket would say (ownerGuard judges them).
func asPeer(t *testing.T, s *Server, who *peer, adminGID int) peerClient {
	t.Helper()
	h := s.ownerGuard(s.Handler(), adminGID)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, who)))
	}))
	t.Cleanup(ts.Close)
	r, err := vmfest.Connect(ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return peerClient{r, ts.URL}
}

type peerClient struct {
	*vmfest.Remote
	url string
}

// cancel cancels operation id and returns the answer's status.
func (c peerClient) cancel(t *testing.T, id string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodDelete, c.url+"/v1/operations/"+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestVolumeAndOperationOwners: on a socket with owners a volume belongs
// to its creator: another member can neither remove it nor attach it, at
// create (in the attach list, a hardware spec's slot or a hardware model)
// or later; its owner and an admin can. An operation can be cancelled
// only by whoever started it or an admin. Members add hardware models.
func TestVolumeAndOperationOwners(t *testing.T) {
	fk := fake.New(fake.Options{})
	e := newEnv(t, withDriver(fk))
	const adminGID = 4242
	one := asPeer(t, e.api, &peer{cred: unix.Ucred{Uid: 1001, Gid: 1001}}, adminGID)
	two := asPeer(t, e.api, &peer{cred: unix.Ucred{Uid: 1003, Gid: 1003}}, adminGID)
	admin := asPeer(t, e.api, &peer{cred: unix.Ucred{Uid: 1002, Gid: 1002}, groups: []uint32{adminGID}}, adminGID)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	v, err := one.CreateVolume(ctx, vmfest.VolumeSpec{Name: "v1", Size: 1 << 30, Labels: map[string]string{"team": "a"}})
	if err != nil || v.Labels[OwnerLabel] != "1001" || v.Labels["team"] != "a" {
		t.Fatalf("CreateVolume = %+v, %v; want owner 1001", v.Labels, err)
	}
	if _, err := one.CreateVolume(ctx, vmfest.VolumeSpec{Name: "v2", Size: 1 << 30, Labels: map[string]string{OwnerLabel: "1003"}}); !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("a member gives a volume away: %v", err)
	}
	withVolume := *natOnly
	withVolume.Storage = []spec.Controller{
		{Name: spec.DefaultIDEName, Bus: spec.BusIDE, Devices: []*spec.Device{nil}},
		{Name: "disks", Bus: spec.BusVirtio, Devices: []*spec.Device{{DeviceType: spec.DeviceHardDisk, Volume: "v1"}}},
	}
	if err := two.AddHardwareModel(ctx, "with-v1", withVolume); err != nil {
		t.Fatalf("a member adds a hardware model: %v", err)
	}
	theirs := "volume v1 belongs to uid 1001: only its owner, root or the admin group may"
	for _, c := range []struct {
		name string
		do   func() error
	}{
		{"remove", func() error { return two.RemoveVolume(ctx, "v1") }},
		{"create attaching it", func() error {
			_, err := two.Instance(ctx, "m2", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly), vmfest.WithAttachment(vmfest.Attachment{Volume: "v1"}))
			return err
		}},
		{"create with it in a slot", func() error {
			_, err := two.Instance(ctx, "m2", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(withVolume))
			return err
		}},
		{"create from a model naming it", func() error {
			_, err := two.Instance(ctx, "m2", vmfest.ImageSpec(e.blank), vmfest.HardwareModel("with-v1"))
			return err
		}},
		{"attach", func() error {
			m, err := two.Instance(ctx, "m3", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
			if err != nil {
				return err
			}
			_, err = m.Attach(ctx, vmfest.Attachment{Volume: "v1"})
			return err
		}},
	} {
		if err := c.do(); !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), theirs) {
			t.Errorf("member 1003 %s another's volume: %v, want %q", c.name, err, theirs)
		}
	}
	if _, err := two.FindMachine(ctx, "m2"); !errors.Is(err, vmfest.ErrNotFound) {
		t.Errorf("a refused create left m2: %v", err)
	}
	m1, err := one.Instance(ctx, "m1", vmfest.ImageSpec(e.blank), vmfest.HardwareModel("with-v1"))
	if err != nil {
		t.Fatalf("the owner creates with the volume: %v", err)
	}
	if _, err := m1.Detach(ctx, vmfest.Attachment{Volume: "v1"}); err != nil {
		t.Fatal(err)
	}
	if err := two.RemoveHardwareModel(ctx, "with-v1"); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("a member removes a shared hardware model: %v", err)
	}
	if err := one.RemoveVolume(ctx, "v1"); err != nil {
		t.Fatalf("the owner removes the volume: %v", err)
	}
	if _, err := two.CreateVolume(ctx, vmfest.VolumeSpec{Name: "v3", Size: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if err := admin.RemoveVolume(ctx, "v3"); err != nil {
		t.Fatalf("an admin removes a member's volume: %v", err)
	}

	// Operations: started by 1001 (as its request's context says).
	block := func(ctx context.Context, _ func(wire.Progress)) (any, error) { <-ctx.Done(); return nil, ctx.Err() }
	started := context.WithValue(context.Background(), callerKey{}, &caller{uid: "1001", adminGID: adminGID})
	for _, c := range []struct {
		who    peerClient
		status int
	}{{two, http.StatusForbidden}, {one, http.StatusOK}, {admin, http.StatusOK}} {
		op, err := e.api.ops.start(started, wire.OpWaitReady, "m1", time.Hour, block)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.who.cancel(t, op.ID); got != c.status {
			t.Errorf("cancel an operation of uid 1001: status %d, want %d", got, c.status)
		}
		if c.status != http.StatusOK {
			one.cancel(t, op.ID)
		}
	}
}
