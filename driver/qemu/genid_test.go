package qemu

import (
	"slices"
	"strings"
	"testing"
)

// The VM generation ID: a vmgenid device when one is given, none
// otherwise (a machine of an older vmfest, whose saved state has none),
// and a GUID only.
func TestArgsGenID(t *testing.T) {
	base := Config{Name: "x", Dir: "/m/x", Hardware: hw(nil), Disk: Disk{Path: "/d", Format: "raw"}, Accel: AccelTCG, NICs: []NICBackend{{Tap: "vmt0"}, {}}}
	for _, tc := range []struct {
		genid string
		want  string // the device, "" none; or the error
		err   bool
	}{
		{"", "", false},
		{"324e6eaf-d1d1-4bf6-bf41-b9bb6c91fb87", "vmgenid,guid=324e6eaf-d1d1-4bf6-bf41-b9bb6c91fb87", false},
		{"324e6eaf-d1d1-4bf6-bf41-b9bb6c91fb8", "must be a GUID", true},
		{"324e6eaf-d1d1-4bf6-bf41-b9bb6c91fb87,id=x", "must be a GUID", true},
		{"324e6eaf-d1d1-4bf6-bf41-b9bb6c91fbzz", "must be a GUID", true},
	} {
		cfg := base
		cfg.GenID = tc.genid
		args, err := cfg.Args()
		if tc.err {
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q: err = %v, want %q", tc.genid, err, tc.want)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tc.genid, err)
		}
		has := slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "vmgenid") })
		if tc.want == "" && has {
			t.Errorf("no generation id, but a vmgenid device: %q", args)
		}
		if tc.want != "" && !slices.Contains(args, tc.want) {
			t.Errorf("%q: no %s in %q", tc.genid, tc.want, args)
		}
	}
}
