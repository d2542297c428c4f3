package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseHardwareVMFestKeys(t *testing.T) {
	doc := `
memory-size: 768
cpu-count: 1
network:
  - attachment-type: nat
    adapter-type: e1000
    mac-address: "52:54:00:aa:bb:cc"
storage:
  - name: IDE Controller
    bus: ide
    devices: [null, null, {device-type: dvd}, null]
boot-mount-point: [IDE Controller, 0]
acpi-enabled: true
io-apic-enabled: true
firmware: bios
`
	h, err := ParseHardware([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if h.MemorySize != 768 || h.CPUCount != 1 || h.Network[0].AdapterType != "e1000" || h.Network[0].MACAddress != "52:54:00:aa:bb:cc" {
		t.Fatalf("parsed %+v", h)
	}
	if h.BootMountPoint == nil || *h.BootMountPoint != (MountPoint{"IDE Controller", 0}) {
		t.Fatalf("boot-mount-point = %v", h.BootMountPoint)
	}
	if d := h.Storage[0].Devices; len(d) != 4 || d[0] != nil || d[2] == nil || d[2].DeviceType != DeviceDVD {
		t.Fatalf("devices = %v", d)
	}
	if err := h.WithDefaults().validate(4); err != nil {
		t.Fatal(err)
	}
	// Round trip through JSON and YAML keeps every key.
	js, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseHardware(js)
	if err != nil {
		t.Fatal(err)
	}
	js2, _ := json.Marshal(back)
	if string(js) != string(js2) {
		t.Fatalf("JSON round trip changed the spec:\n%s\n%s", js, js2)
	}
	y, err := MarshalYAML(h)
	if err != nil {
		t.Fatal(err)
	}
	back, err = ParseHardware(y)
	if err != nil {
		t.Fatal(err)
	}
	js3, _ := json.Marshal(back)
	if string(js) != string(js3) {
		t.Fatalf("YAML round trip changed the spec:\n%s\n%s", js, js3)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"unknown key", "memory-size: 512\nmemroy: 3\n", `unknown key "memroy"`},
		{"unknown nested key", "network: [{attachment-type: nat, speed: 10}]\n", `unknown key "speed"`},
		{"wrong type", "memory-size: lots\n", "memory-size"},
		{"bad mount point", "boot-mount-point: [IDE Controller]\n", "boot-mount-point"},
		{"empty", "  \n", "empty document"},
		{"not yaml", "memory-size: [\n", "not valid YAML"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseHardware([]byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	h := Hardware{}.WithDefaults()
	if h.MemorySize != DefaultMemorySize || h.CPUCount != 1 || len(h.Network) != 1 || h.Network[0].AttachmentType != AttachNAT || h.Network[0].AdapterType != AdapterVirtio {
		t.Fatalf("defaults = %+v", h)
	}
	if h.BootMountPoint.String() != "[IDE Controller, 0]" || !*h.ACPIEnabled || !*h.IOAPICEnabled || h.Firmware != FirmwareBIOS {
		t.Fatalf("defaults = %+v", h)
	}
	if err := h.validate(1); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	base := func() Hardware { return Hardware{}.WithDefaults() }
	tests := []struct {
		name   string
		modify func(*Hardware)
		field  string
		want   string
	}{
		{"memory zero", func(h *Hardware) { h.MemorySize = -1 }, "memory-size", "positive"},
		{"memory huge", func(h *Hardware) { h.MemorySize = MaxMemorySize + 1 }, "memory-size", "more than"},
		{"cpus over host", func(h *Hardware) { h.CPUCount = 3 }, "cpu-count", "more than the host's 2 CPUs"},
		{"cpus zero", func(h *Hardware) { h.CPUCount = -2 }, "cpu-count", "at least 1"},
		{"attachment", func(h *Hardware) { h.Network[0].AttachmentType = "wifi" }, "network[0].attachment-type", "allowed: nat, host-only, bridged, internal, none"},
		{"host-only name", func(h *Hardware) {
			h.Network[0] = NIC{AttachmentType: AttachHostOnly, AdapterType: AdapterVirtio, HostOnlyInterface: "a-very-long-bridge-name"}
		}, "network[0].host-only-interface", "1-15 letters"},
		{"host-only key on nat", func(h *Hardware) { h.Network[0].HostOnlyInterface = "vmfestnet0" }, "network[0].host-only-interface", "only applies to attachment-type host-only, not nat"},
		{"bridged without bridge", func(h *Hardware) { h.Network[0].AttachmentType = AttachBridged }, "network[0].bridged-interface", "must name the host bridge"},
		{"internal name", func(h *Hardware) {
			h.Network[0] = NIC{AttachmentType: AttachInternal, AdapterType: AdapterVirtio, InternalNetwork: "bad/name"}
		}, "network[0].internal-network", "1-15 letters"},
		{"nat rules on host-only", func(h *Hardware) {
			h.Network[0] = NIC{AttachmentType: AttachHostOnly, AdapterType: AdapterVirtio, HostOnlyInterface: "vmfestnet0", NATRules: []NATRule{{Name: "w", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 80, GuestPort: 80}}}
		}, "network[0].nat-rules", "only applies to attachment-type nat"},
		{"nat rule protocol", func(h *Hardware) {
			h.Network[0].NATRules = []NATRule{{Name: "w", Protocol: "sctp", HostIP: "127.0.0.1", HostPort: 80, GuestPort: 80}}
		}, "network[0].nat-rules[0].protocol", "allowed: tcp, udp"},
		{"nat rule host port", func(h *Hardware) {
			h.Network[0].NATRules = []NATRule{{Name: "w", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 70000, GuestPort: 80}}
		}, "network[0].nat-rules[0].host-port", "allowed: 1-65535"},
		{"nat rule guest port", func(h *Hardware) {
			h.Network[0].NATRules = []NATRule{{Name: "w", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 8080}}
		}, "network[0].nat-rules[0].guest-port", "allowed: 1-65535"},
		{"nat rule host ip", func(h *Hardware) {
			h.Network[0].NATRules = []NATRule{{Name: "w", Protocol: "tcp", HostIP: "localhost", HostPort: 8080, GuestPort: 80}}
		}, "network[0].nat-rules[0].host-ip", "not an IPv4 address"},
		{"nat rule name", func(h *Hardware) {
			h.Network[0].NATRules = []NATRule{{Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80}}
		}, "network[0].nat-rules[0].name", "must not be empty"},
		{"nat rules one host port", func(h *Hardware) {
			h.Network[0].NATRules = []NATRule{
				{Name: "a", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80},
				{Name: "b", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 81},
			}
		}, "network[0].nat-rules[1].host-port", "already forwarded by network[0].nat-rules[0]"},
		{"adapter", func(h *Hardware) { h.Network[0].AdapterType = "ne2k" }, "network[0].adapter-type", "allowed: virtio, e1000, rtl8139, pcnet"},
		{"mac", func(h *Hardware) { h.Network[0].MACAddress = "zz" }, "network[0].mac-address", "not a MAC"},
		{"multicast mac", func(h *Hardware) { h.Network[0].MACAddress = "01:00:5e:00:00:01" }, "network[0].mac-address", "multicast"},
		{"duplicate mac", func(h *Hardware) {
			h.Network = []NIC{{AttachmentType: AttachNAT, AdapterType: AdapterVirtio, MACAddress: "52:54:00:00:00:01"}, {AttachmentType: AttachNAT, AdapterType: AdapterVirtio, MACAddress: "52:54:00:00:00:01"}}
		}, "network[1].mac-address", "already used"},
		{"bus", func(h *Hardware) { h.Storage[0].Bus = "floppy" }, "storage[0].bus", "allowed: ide, sata, scsi, virtio"},
		{"ide slot past 3", func(h *Hardware) { h.Storage[0].Devices = append(h.Storage[0].Devices, &Device{DeviceType: DeviceDVD}) }, "storage[0].devices", "slots 0-3"},
		{"device type", func(h *Hardware) { h.Storage[0].Devices[2].DeviceType = "tape" }, "storage[0].devices[2].device-type", "allowed: hard-disk, dvd"},
		{"boot names no controller", func(h *Hardware) { h.BootMountPoint.Controller = "SATA" }, "boot-mount-point", `"SATA" names no controller; controllers: "IDE Controller"`},
		{"boot slot past 3", func(h *Hardware) { h.BootMountPoint.Slot = 4 }, "boot-mount-point", "slots 0-3"},
		{"boot slot taken", func(h *Hardware) { h.BootMountPoint.Slot = 2 }, "boot-mount-point", "already holds a dvd"},
		{"two controllers one name", func(h *Hardware) {
			h.Storage = append(h.Storage, Controller{Name: DefaultIDEName, Bus: BusSATA})
		}, "storage[1].name", "unique"},
		{"two ide controllers", func(h *Hardware) { h.Storage = append(h.Storage, Controller{Name: "IDE 2", Bus: BusIDE}) }, "storage[1].bus", "one IDE controller"},
		{"dvd on virtio", func(h *Hardware) {
			h.Storage = append(h.Storage, Controller{Name: "V", Bus: BusVirtio, Devices: []*Device{{DeviceType: DeviceDVD}}})
		}, "storage[1].devices[0]", "hard disks only"},
		{"stray hard disk", func(h *Hardware) { h.Storage[0].Devices[1] = &Device{DeviceType: DeviceHardDisk} }, "storage[0].devices[1]", "needs a disk"},
		{"volume and location", func(h *Hardware) {
			h.Storage[0].Devices[1] = &Device{DeviceType: DeviceHardDisk, Volume: "v", Location: "/d.img"}
		}, "storage[0].devices[1]", "not both"},
		{"volume in a dvd slot", func(h *Hardware) { h.Storage[0].Devices[2].Volume = "v" }, "storage[0].devices[2].volume", "give its location"},
		{"bad volume name", func(h *Hardware) { h.Storage[0].Devices[1] = &Device{DeviceType: DeviceHardDisk, Volume: "../x"} }, "storage[0].devices[1].volume", "not a volume name"},
		{"media in the boot slot", func(h *Hardware) { h.Storage[0].Devices[0] = &Device{DeviceType: DeviceHardDisk, Volume: "v"} }, "storage[0].devices[0]", "holds the machine's image"},
		{"format of a volume", func(h *Hardware) {
			h.Storage[0].Devices[1] = &Device{DeviceType: DeviceHardDisk, Volume: "v", Format: "raw"}
		}, "storage[0].devices[1].format", "only a hard-disk location"},
		{"format unknown", func(h *Hardware) {
			h.Storage[0].Devices[1] = &Device{DeviceType: DeviceHardDisk, Location: "/d.img", Format: "vmdk"}
		}, "storage[0].devices[1].format", "allowed: qcow2, raw"},
		{"NUL in a location", func(h *Hardware) { h.Storage[0].Devices[2].Location = "/a\x00b" }, "storage[0].devices[2].location", "NUL"},
		{"firmware", func(h *Hardware) { h.Firmware = "coreboot" }, "firmware", "allowed: bios, efi"},
		{"no storage", func(h *Hardware) { h.Storage = []Controller{} }, "storage", "at least one controller"},
		{"ioapic off with smp", func(h *Hardware) { h.CPUCount = 2; h.IOAPICEnabled = Bool(false) }, "io-apic-enabled", "needs the I/O APIC"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := base()
			tt.modify(&h)
			err := h.validate(2)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("not a ValidationError: %v", err)
			}
			for _, p := range ve.Problems {
				if p.Field == tt.field && strings.Contains(p.Problem, tt.want) {
					return
				}
			}
			t.Fatalf("err = %v, want field %s saying %q", err, tt.field, tt.want)
		})
	}
}

func TestValidBuses(t *testing.T) {
	h := Hardware{
		Storage: []Controller{
			{Name: "SATA", Bus: BusSATA, Devices: []*Device{nil, {DeviceType: DeviceDVD}}},
			{Name: "SCSI", Bus: BusSCSI, Devices: []*Device{{DeviceType: DeviceDVD}}},
			{Name: "VirtIO", Bus: BusVirtio},
		},
		BootMountPoint: &MountPoint{"VirtIO", 0},
	}.WithDefaults()
	if err := h.validate(1); err != nil {
		t.Fatal(err)
	}
}

func TestBuiltinModels(t *testing.T) {
	want := map[string][2]int{"micro": {512, 1}, "small": {1024, 1}, "medium": {2048, 2}, "large": {4096, 4}, "xlarge": {8192, 8}}
	got := BuiltinHardware()
	if len(got) != len(want) {
		t.Fatalf("models = %v", BuiltinHardwareNames())
	}
	for name, w := range want {
		h := got[name]
		if h.MemorySize != w[0] || h.CPUCount != w[1] {
			t.Errorf("%s = %d MiB/%d CPU, want %d/%d", name, h.MemorySize, h.CPUCount, w[0], w[1])
		}
		if len(h.Network) != 2 || h.Network[0].AttachmentType != AttachHostOnly || h.Network[0].HostOnlyInterface != "vmfestnet0" ||
			h.Network[1].AttachmentType != AttachNAT || h.BootMountPoint.String() != "[VirtIO Controller, 0]" {
			t.Errorf("%s: %+v", name, h)
		}
		if err := h.validate(8); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if names := BuiltinHardwareNames(); strings.Join(names, ",") != "micro,small,medium,large,xlarge" {
		t.Errorf("names = %v", names)
	}
}

func TestMerge(t *testing.T) {
	base := BuiltinHardware()["small"]
	over := &Hardware{MemorySize: 256, Network: []NIC{{AttachmentType: AttachNone}}, ACPIEnabled: Bool(false)}
	got := Merge(base, over)
	if got.MemorySize != 256 || got.CPUCount != 1 || len(got.Network) != 1 || got.Network[0].AttachmentType != AttachNone || *got.ACPIEnabled {
		t.Fatalf("merged = %+v", got)
	}
	if base.MemorySize != 1024 || !*base.ACPIEnabled {
		t.Fatal("merge changed its base")
	}
	// New storage without a boot mount point: the default picks its first controller.
	got = Merge(base, &Hardware{Storage: []Controller{{Name: "V", Bus: BusVirtio}}}).WithDefaults()
	if got.BootMountPoint.Controller != "V" {
		t.Fatalf("boot = %v", got.BootMountPoint)
	}
}

func TestParseImage(t *testing.T) {
	tests := []struct {
		name, doc string
		want      Image
		err       string
	}{
		{"location", `{"location": "/i/d.qcow2", "immutable": true, "os-family": "linux", "os-64-bit": true, "username": "root"}`,
			Image{Location: "/i/d.qcow2", Immutable: true, OSFamily: "linux", OS64Bit: true, Username: "root"}, ""},
		{"uuid alias", "uuid: /i/d.vdi\nos-version: '12'\n", Image{Location: "/i/d.vdi", OSVersion: "12"}, ""},
		{"both agree", "uuid: /a\nlocation: /a\n", Image{Location: "/a"}, ""},
		{"both differ", "uuid: /a\nlocation: /b\n", Image{}, "differ"},
		{"unknown key", "location: /a\ncolour: blue\n", Image{}, `unknown key "colour"`},
		{"hardware override", "location: /a\nhardware: {memory-size: 128}\n", Image{Location: "/a", Hardware: &Hardware{MemorySize: 128}}, ""},
		{"format raw", "location: /a\nformat: raw\n", Image{Location: "/a", Format: DiskFormatRaw}, ""},
		{"format qcow2", `{"location": "/a", "format": "qcow2"}`, Image{Location: "/a", Format: DiskFormatQCOW2}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseImage([]byte(tt.doc))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			a, _ := json.Marshal(got)
			b, _ := json.Marshal(tt.want)
			if string(a) != string(b) {
				t.Fatalf("got %s want %s", a, b)
			}
		})
	}
	if err := (Image{}).Validate(); err == nil || !strings.Contains(err.Error(), "location") {
		t.Fatalf("empty image validated: %v", err)
	}
}

func TestImageFormat(t *testing.T) {
	tests := []struct {
		format string
		want   string // "" for valid
	}{
		{"", ""},
		{"raw", ""},
		{"qcow2", ""},
		{"vmdk", `format: "vmdk" is not supported; allowed: raw, qcow2`},
		{"QCOW2", `format: "QCOW2" is not supported; allowed: raw, qcow2`},
		{"raw,backing", `format: "raw,backing" is not supported`},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			err := Image{Location: "/a", Format: tt.format}.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestNetworkKeys(t *testing.T) {
	doc := `
network:
  - attachment-type: host-only
  - attachment-type: nat
    nat-rules: [{name: web, host-port: 8080, guest-port: 80}, {name: dns, protocol: udp, host-ip: 0.0.0.0, host-port: 5353, guest-port: 53}]
  - attachment-type: internal
  - attachment-type: bridged
    bridged-interface: br0
`
	h, err := ParseHardware([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	h = h.WithDefaults()
	if err := h.validateWith(1, NATPolicy{HostAddresses: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/32")}}); err != nil {
		t.Fatal(err)
	}
	if got := h.Network[0].HostOnlyInterface; got != DefaultHostOnlyInterface {
		t.Errorf("host-only-interface = %q", got)
	}
	if got := h.Network[2].InternalNetwork; got != DefaultInternalNetwork {
		t.Errorf("internal-network = %q", got)
	}
	want := []NATRule{{Name: "web", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80}, {Name: "dns", Protocol: "udp", HostIP: "0.0.0.0", HostPort: 5353, GuestPort: 53}}
	if a, b := fmt.Sprint(h.Network[1].NATRules), fmt.Sprint(want); a != b {
		t.Errorf("nat-rules = %s, want %s", a, b)
	}
	// Clone copies the rules: changing the clone leaves the original alone.
	c := h.Clone()
	c.Network[1].NATRules[0].HostPort = 1
	if h.Network[1].NATRules[0].HostPort != 8080 {
		t.Error("Clone shares nat-rules")
	}
	if _, err := ParseHardware([]byte("network: [{attachment-type: nat, nat-rules: [{name: a, hostport: 1}]}]")); err == nil || !strings.Contains(err.Error(), `unknown key "hostport"`) {
		t.Errorf("unknown nat-rule key: %v", err)
	}
}

// TestNATPolicy: NAT rules listen on loopback and on ports from 1024 up,
// unless the operator's policy allows more; an IPv4-mapped IPv6 host-ip is
// refused as invalid (QEMU cannot take it) with the plain form to write.
func TestNATPolicy(t *testing.T) {
	lan := NATPolicy{HostAddresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
	any := NATPolicy{HostAddresses: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, LowPorts: true}
	tests := []struct {
		name   string
		policy NATPolicy
		hostIP string
		port   int
		field  string // "" when the rule is allowed
		want   string
	}{
		{"loopback", NATPolicy{}, "127.0.0.1", 8080, "", ""},
		{"other loopback", NATPolicy{}, "127.0.0.53", 8080, "", ""},
		{"wildcard refused", NATPolicy{}, "0.0.0.0", 8080, "network[1].nat-rules[0].host-ip", "allowed: 127.0.0.0/8"},
		{"lan address refused", NATPolicy{}, "192.0.2.10", 8080, "network[1].nat-rules[0].host-ip", "the operator"},
		{"lan address allowed", lan, "192.0.2.10", 8080, "", ""},
		{"outside the allowed prefix", lan, "198.51.100.1", 8080, "network[1].nat-rules[0].host-ip", "allowed: 127.0.0.0/8, 192.0.2.0/24"},
		{"wildcard allowed", any, "0.0.0.0", 8080, "", ""},
		{"mapped loopback", NATPolicy{}, "::ffff:127.0.0.1", 8080, "network[1].nat-rules[0].host-ip", `write it as 127.0.0.1`},
		{"mapped even when allowed", any, "::ffff:0.0.0.0", 8080, "network[1].nat-rules[0].host-ip", `write it as 0.0.0.0`},
		{"ipv6", any, "::1", 8080, "network[1].nat-rules[0].host-ip", "not an IPv4 address"},
		{"zone", any, "127.0.0.1%lo", 8080, "network[1].nat-rules[0].host-ip", "not an IPv4 address"},
		{"low port refused", NATPolicy{}, "127.0.0.1", 80, "network[1].nat-rules[0].host-port", "allowed: 1024-65535"},
		{"port 1023 refused", lan, "127.0.0.1", 1023, "network[1].nat-rules[0].host-port", "below 1024"},
		{"port 1024", NATPolicy{}, "127.0.0.1", 1024, "", ""},
		{"low port allowed", any, "127.0.0.1", 80, "", ""},
		{"port 0 even when allowed", any, "127.0.0.1", 0, "network[1].nat-rules[0].host-port", "allowed: 1-65535"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := Hardware{Network: []NIC{
				{AttachmentType: AttachNone},
				{AttachmentType: AttachNAT, NATRules: []NATRule{{Name: "r", HostIP: tt.hostIP, HostPort: tt.port, GuestPort: 80}}},
			}}.WithDefaults()
			err := h.validateWith(2, tt.policy)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want a ValidationError", err)
			}
			for _, p := range ve.Problems {
				if p.Field == tt.field && strings.Contains(p.Problem, tt.want) {
					return
				}
			}
			t.Fatalf("err = %v, want field %s saying %q", err, tt.field, tt.want)
		})
	}
	// Validate is the strictest policy.
	h := Hardware{Network: []NIC{{AttachmentType: AttachNAT, NATRules: []NATRule{{Name: "r", HostIP: "0.0.0.0", HostPort: 8080, GuestPort: 80}}}}}.WithDefaults()
	if err := h.Validate(); err == nil {
		t.Fatal("Validate allowed host-ip 0.0.0.0")
	}
	if err := h.ValidateWith(any); err != nil {
		t.Fatalf("ValidateWith(0.0.0.0/0): %v", err)
	}
}

// validate is Validate on a host with hostCPUs CPUs.
func (h Hardware) validate(hostCPUs int) error { return h.validateWith(hostCPUs, NATPolicy{}) }

func TestSlots(t *testing.T) {
	dvd := &Device{DeviceType: DeviceDVD}
	disk := &Device{DeviceType: DeviceHardDisk, Volume: "data"}
	for _, c := range []struct {
		name string
		ctl  Controller
		boot *MountPoint
		want []Slot
	}{
		{"default ide", Controller{Name: "ide", Devices: []*Device{nil, nil, dvd, nil}}, &MountPoint{"ide", 0},
			[]Slot{{Index: 0, Kind: DeviceHardDisk, Boot: true}, {Index: 2, Kind: DeviceDVD, Device: dvd}}},
		{"boot past the devices", Controller{Name: "sata", Devices: []*Device{dvd}}, &MountPoint{"sata", 3},
			[]Slot{{Index: 0, Kind: DeviceDVD, Device: dvd}, {Index: 3, Kind: DeviceHardDisk, Boot: true}}},
		{"other controller boots", Controller{Name: "scsi", Devices: []*Device{nil, disk}}, &MountPoint{"ide", 0},
			[]Slot{{Index: 1, Kind: DeviceHardDisk, Device: disk}}},
		{"empty", Controller{Name: "x"}, &MountPoint{"ide", 0}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Hardware{BootMountPoint: c.boot}.Slots(c.ctl)
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("Slots = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Size
		bad  bool
	}{
		{"512M", 512 << 20, false}, {"20G", 20 << 30, false}, {"1T", 1 << 40, false}, {"4096", 4096, false},
		{"20GiB", 20 << 30, false}, {"8gb", 8 << 30, false}, {" 2G ", 2 << 30, false},
		{"", 0, true}, {"-1G", 0, true}, {"1.5G", 0, true}, {"G", 0, true}, {"20X", 0, true}, {"99999999T", 0, true},
	} {
		got, err := ParseSize(c.in)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v", c.in, got, err)
		}
	}
	var h struct {
		S Size `json:"s"`
	}
	for in, want := range map[string]Size{`{"s":"8G"}`: 8 << 30, `{"s":1024}`: 1024} {
		if err := json.Unmarshal([]byte(in), &h); err != nil || h.S != want {
			t.Errorf("unmarshal %s = %d, %v", in, h.S, err)
		}
	}
	if err := json.Unmarshal([]byte(`{"s":"big"}`), &h); !errors.Is(err, ErrInvalid) {
		t.Errorf("unmarshal a bad size: %v", err)
	}
	if out, _ := json.Marshal(Size(20 << 30)); string(out) != `"20G"` {
		t.Errorf("marshal = %s", out)
	}
}
