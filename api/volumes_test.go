package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/spec"
)

// isoFile writes a file that reads as an ISO 9660 image.
func isoFile(t *testing.T, path string) string {
	t.Helper()
	b := make([]byte, 34*1024)
	copy(b[32769:], "CD001")
	if err := os.WriteFile(path, b, 0o444); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestVolumesThroughAPI: volumes and slots through the Remote client, as
// the Local server does them, with the API's statuses.
func TestVolumesThroughAPI(t *testing.T) {
	fk := fake.New(fake.Options{})
	e, r := fakeRemote(t, fk)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	v, err := r.CreateVolume(ctx, vmfest.VolumeSpec{Name: "data", Size: 1 << 30})
	if err != nil || v.Name != "data" || v.Size != 1<<30 || v.Format != "qcow2" {
		t.Fatalf("CreateVolume = %+v, %v", v, err)
	}
	iso := isoFile(t, filepath.Join(e.allowed, "tools.iso"))
	m, err := r.Instance(ctx, "m", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly),
		vmfest.WithAttachment(vmfest.Attachment{Volume: "data"}), vmfest.WithAttachment(vmfest.Attachment{ISO: iso}))
	if err != nil {
		t.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil || len(info.Media) != 2 {
		t.Fatalf("Info = %+v, %v", info.Media, err)
	}
	vs, err := r.Volumes(ctx)
	if err != nil || len(vs) != 1 || vs[0].Machine != "m" {
		t.Fatalf("Volumes = %+v, %v", vs, err)
	}
	if err := r.RemoveVolume(ctx, "data"); !errors.Is(err, vmfest.ErrWrongState) {
		t.Fatalf("remove an attached volume: %v", err)
	}
	at, err := m.Detach(ctx, vmfest.Attachment{ISO: iso})
	if err != nil || at != (spec.MountPoint{Controller: spec.DefaultIDEName, Slot: 2}) {
		t.Fatalf("Detach = %v, %v", at, err)
	}
	if _, err := m.Detach(ctx, vmfest.Attachment{Volume: "data"}); err != nil {
		t.Fatal(err)
	}
	if err := r.RemoveVolume(ctx, "data"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Volume(ctx, "data"); !errors.Is(err, vmfest.ErrNotFound) {
		t.Fatalf("Volume after remove: %v", err)
	}
}

// TestVolumeErrorsThroughAPI: bad input gets the status and a message that
// names the field; paths outside the allowed directories are forbidden in
// every place a request can name one.
func TestVolumeErrorsThroughAPI(t *testing.T) {
	fk := fake.New(fake.Options{})
	e, _ := fakeRemote(t, fk)
	outside := isoFile(t, filepath.Join(t.TempDir(), "outside.iso"))
	if code, body := e.do(t, "POST", "/v1/machines", createBody("m", e.blank)); code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	hw := *natOnly
	hw.Storage = []spec.Controller{{Name: "IDE", Bus: "ide", Devices: []*spec.Device{nil, nil, {DeviceType: "dvd", Location: outside}}}}
	withSpec := createBody("m2", e.blank)
	withSpec["hardware"] = map[string]any{"spec": hw}
	withAttach := createBody("m3", e.blank)
	withAttach["attach"] = []wire.Attachment{{ISO: outside}}
	for _, tt := range []struct {
		name, method, path string
		body               any
		status             int
		want               string
	}{
		{"size", "POST", "/v1/volumes", map[string]any{"name": "v", "size": "12X"}, http.StatusBadRequest, `"12X" is not a size`},
		{"no size", "POST", "/v1/volumes", map[string]any{"name": "v"}, http.StatusBadRequest, "size 0"},
		{"name", "POST", "/v1/volumes", map[string]any{"name": "a/b", "size": "1G"}, http.StatusBadRequest, "volume name"},
		{"unknown field", "POST", "/v1/volumes", map[string]any{"name": "v", "size": "1G", "format": "raw"}, http.StatusBadRequest, "format"},
		{"no volume", "GET", "/v1/volumes/nope", nil, http.StatusNotFound, `volume "nope"`},
		{"remove no volume", "DELETE", "/v1/volumes/nope", nil, http.StatusNotFound, `volume "nope"`},
		{"attach outside", "POST", "/v1/machines/m/attach", wire.Attachment{ISO: outside}, http.StatusForbidden, "iso"},
		{"attach disk outside", "POST", "/v1/machines/m/attach", wire.Attachment{Disk: outside}, http.StatusForbidden, "disk"},
		{"attach nothing", "POST", "/v1/machines/m/attach", wire.Attachment{}, http.StatusBadRequest, "give one of"},
		{"attach to no machine", "POST", "/v1/machines/nope/attach", wire.Attachment{Volume: "v"}, http.StatusNotFound, `machine "nope"`},
		{"attach no volume", "POST", "/v1/machines/m/attach", wire.Attachment{Volume: "v"}, http.StatusNotFound, `volume "v"`},
		{"detach what is not there", "POST", "/v1/machines/m/detach", wire.Attachment{Slot: &spec.MountPoint{Controller: spec.DefaultIDEName, Slot: 1}}, http.StatusNotFound, "not attached"},
		{"spec location outside", "POST", "/v1/machines", withSpec, http.StatusForbidden, "storage[0].devices[2].location"},
		{"attach list outside", "POST", "/v1/machines", withAttach, http.StatusForbidden, "attach[0].iso"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, body := e.do(t, tt.method, tt.path, tt.body)
			var we wire.Error
			json.Unmarshal(body, &we)
			if code != tt.status || !strings.Contains(we.Error, tt.want) {
				t.Fatalf("%s %s: %d %s; want %d saying %q", tt.method, tt.path, code, body, tt.status, tt.want)
			}
		})
	}
	for _, n := range []string{"m2", "m3"} {
		if e.machineExists(t, n) {
			t.Fatalf("a refused create left machine %s", n)
		}
	}
}
