package spec

import (
	"encoding/json"
	"testing"
)

// FuzzParseHardware: any input gives a spec or an error, never a panic, and
// a spec that parses, once defaulted, validates or explains why not.
func FuzzParseHardware(f *testing.F) {
	for _, seed := range []string{
		"memory-size: 512\ncpu-count: 1\n",
		`{"network": [{"attachment-type": "nat", "adapter-type": "e1000"}]}`,
		"storage: [{name: S, bus: sata, devices: [null, {device-type: dvd}]}]\nboot-mount-point: [S, 0]\n",
		"boot-mount-point: [x, -1]\n",
		"storage: [{name: I, bus: ide, devices: [null, null, null, null, null, null]}]\n",
		"memory-size: 99999999999999999999\n",
		"- a\n- b\n",
		"&a [*a]",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseHardware(data)
		if err != nil {
			return
		}
		d := h.WithDefaults()
		_ = d.validate(4)
		if _, err := json.Marshal(d); err != nil {
			t.Fatalf("a parsed spec does not marshal: %v", err)
		}
		Merge(d, &h)
	})
}

// FuzzParseImage: the image parser never panics.
func FuzzParseImage(f *testing.F) {
	for _, seed := range []string{
		`{"location": "/a", "immutable": true}`,
		"uuid: /x.vdi\nos-64-bit: true\n",
		"location: /a\nhardware: {memory-size: 1, network: [{attachment-type: wifi}]}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		im, err := ParseImage(data)
		if err != nil {
			return
		}
		_ = im.Validate()
	})
}
