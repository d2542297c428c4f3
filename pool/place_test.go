package pool

import (
	"errors"
	"io/fs"
	"testing"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/spec"
)

func TestPlace(t *testing.T) {
	hosts := map[string]HostRecord{
		"a": {ID: "a", MemoryMiB: 8192, Models: []string{"tiny"}},
		"b": {ID: "b", MemoryMiB: 8192, Models: []string{"tiny", "debian"}},
		"c": {ID: "c", MemoryMiB: 16384},
	}
	res := func(pairs ...any) map[string]resv {
		out := map[string]resv{}
		for i := 0; i < len(pairs); i += 3 {
			out[pairs[i].(string)] = resv{Reservation: Reservation{Host: pairs[i+1].(string), MemoryMiB: int64(pairs[i+2].(int))}}
		}
		return out
	}
	tests := []struct {
		name   string
		pin    string
		drains map[string]bool
		res    map[string]resv
		image  vmfest.Image
		want   string
		err    error
	}{
		{name: "most memory", image: vmfest.ImageSpec(spec0), want: "c"},
		{name: "most uncommitted memory", res: res("x", "c", 12288), image: vmfest.ImageSpec(spec0), want: "a"},
		{name: "ties go to fewer machines", res: res("x", "c", 8192, "y", "a", 0), image: vmfest.ImageSpec(spec0), want: "b"},
		{name: "model holders only", image: vmfest.ImageModel("tiny"), want: "a"},
		{name: "model on one host", image: vmfest.ImageModel("debian"), want: "b"},
		{name: "model nowhere", image: vmfest.ImageModel("nope"), err: vmfest.ErrNotFound},
		{name: "drained skipped", drains: map[string]bool{"c": true}, image: vmfest.ImageSpec(spec0), want: "a"},
		{name: "all drained", drains: map[string]bool{"a": true, "b": true, "c": true}, image: vmfest.ImageSpec(spec0), err: vmfest.ErrUnavailable},
		{name: "pinned", pin: "a", image: vmfest.ImageSpec(spec0), want: "a"},
		{name: "pinned, gone", pin: "z", image: vmfest.ImageSpec(spec0), err: vmfest.ErrUnavailable},
		{name: "pinned, draining", pin: "a", drains: map[string]bool{"a": true}, image: vmfest.ImageSpec(spec0), err: vmfest.ErrUnavailable},
		{name: "pinned, no model", pin: "c", image: vmfest.ImageModel("tiny"), err: vmfest.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New(nil, WithHost(tt.pin))
			v := view{hosts: hosts, drains: tt.drains, res: tt.res}
			h, err := p.place(v, tt.image)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil || h.ID != tt.want {
				t.Fatalf("placed on %q, %v; want %q", h.ID, err, tt.want)
			}
		})
	}
}

var spec0 = vmfestSpec()

func TestRemoteToken(t *testing.T) {
	tok := "secret"
	p := New(nil, WithTokens(tok))
	tests := []struct {
		name string
		h    HostRecord
		err  error
	}{
		{"loopback http", HostRecord{ID: "a", URL: "http://127.0.0.1:18083", TokenSHA256: TokenFingerprint(tok)}, nil},
		{"unix, no token", HostRecord{ID: "b", URL: "unix:///run/vmfest.sock", TokenSHA256: TokenFingerprint("other")}, nil},
		{"https remote", HostRecord{ID: "c", URL: "https://10.0.0.2:18083", TokenSHA256: TokenFingerprint(tok)}, nil},
		{"plain http remote", HostRecord{ID: "d", URL: "http://10.0.0.2:18083", TokenSHA256: TokenFingerprint(tok)}, fs.ErrPermission},
		{"unknown token", HostRecord{ID: "e", URL: "https://10.0.0.3:18083", TokenSHA256: TokenFingerprint("other")}, fs.ErrPermission},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.remote(tt.h)
			if !errors.Is(err, tt.err) && !(tt.err == nil && err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
		})
	}
}

func vmfestSpec() spec.Image { return spec.Image{Location: "/srv/disk.qcow2", Immutable: true} }
