package libvirt

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
)

const testDir = "/var/lib/vmfest/machines/web"

func testMachine() driver.Machine {
	return driver.Machine{Name: "web", Dir: testDir, ID: "3f2a9c1e77d04b8a"}
}

// microSpec is the micro hardware model as vmfest resolves it: host-only
// NIC 0 on a tap, nat NIC 1 with an SSH forward and a nat-rule, IDE with
// the boot disk in slot 0 and a DVD in slot 2 (VMFest's storage; micro's
// own boots from virtio), a cloud-init seed.
func microSpec() driver.StartSpec {
	hw := spec.BuiltinHardware()["micro"]
	hw.Storage, hw.BootMountPoint = spec.DefaultStorage(), &spec.MountPoint{Controller: spec.DefaultIDEName}
	hw.Network[0].MACAddress = "52:54:00:aa:00:01"
	hw.Network[1].MACAddress = "52:54:00:aa:00:02"
	hw.Network[1].NATRules = []spec.NATRule{{Name: "web", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80}}
	return driver.StartSpec{
		Machine:  testMachine(),
		Hardware: hw,
		Disk: driver.Disk{Path: testDir + "/disk.qcow2", Format: "qcow2",
			BackingPath: "/var/lib/vmfest/models/images/tiny/disk.qcow2", BackingFormat: "qcow2"},
		NICs: []driver.NIC{{Tap: "vmf-web-0"}, {SSHPort: 40022}},
		Seed: testDir + "/cidata.iso",
	}
}

type xmlCase struct {
	name   string
	spec   func() driver.StartSpec
	params domainParams
	// want are fragments of the marshalled XML, in order.
	want []string
	// not are fragments that must not appear.
	not []string
	// err, when set, is a fragment of the expected error.
	err string
}

var tcg = domainParams{Accel: "tcg", SecModels: []string{"dac", "none"}}

func xmlCases() []xmlCase {
	with := func(edit func(*driver.StartSpec)) func() driver.StartSpec {
		return func() driver.StartSpec { s := microSpec(); edit(&s); return s }
	}
	return []xmlCase{{
		name:   "micro",
		spec:   microSpec,
		params: tcg,
		want: []string{
			`<domain type="qemu">`,
			`<name>vmfest-web-3f2a9c1e</name>`,
			`<vmfest:machine xmlns:vmfest="` + Namespace + `"><vmfest:name>web</vmfest:name><vmfest:id>3f2a9c1e77d04b8a</vmfest:id><vmfest:dir>` + testDir + `</vmfest:dir></vmfest:machine>`,
			`<memory unit="MiB">512</memory>`,
			`<vcpu>1</vcpu>`,
			`<type arch="x86_64" machine="pc">hvm</type>`,
			`<acpi></acpi>`,
			`<on_poweroff>destroy</on_poweroff>`,
			// The boot disk, its chain spelled out, at IDE slot 0.
			`<disk type="file" device="disk">`,
			`<driver name="qemu" type="qcow2" discard="unmap"></driver>`,
			`<source file="` + testDir + `/disk.qcow2"></source>`,
			`<backingStore type="file">`,
			`<format type="qcow2"></format>`,
			`<source file="/var/lib/vmfest/models/images/tiny/disk.qcow2"></source>`,
			`<backingStore></backingStore>`,
			`<target dev="hda" bus="ide"></target>`,
			`<boot order="1"></boot>`,
			`<address type="drive" controller="0" bus="0" target="0" unit="0"></address>`,
			// The seed in the DVD at slot 2 (bus 1, unit 0).
			`<disk type="file" device="cdrom">`,
			`<source file="` + testDir + `/cidata.iso"></source>`,
			`<target dev="hdc" bus="ide"></target>`,
			`<readonly></readonly>`,
			`<address type="drive" controller="0" bus="1" target="0" unit="0"></address>`,
			`<controller type="usb" model="none"></controller>`,
			// NIC 0 on its tap, NIC 1 user-mode with an alias for hostfwd.
			`<interface type="ethernet">`,
			`<mac address="52:54:00:aa:00:01"></mac>`,
			`<target dev="vmf-web-0"></target>`,
			`<model type="virtio"></model>`,
			`<rom enabled="no"></rom>`,
			`<interface type="user">`,
			`<mac address="52:54:00:aa:00:02"></mac>`,
			`<alias name="ua-net1"></alias>`,
			`<serial type="pty">`,
			`<log file="` + testDir + `/serial.log" append="off"></log>`,
			`<console type="pty">`,
			`<channel type="unix">`,
			`<source mode="bind"></source>`,
			`<target type="virtio" name="org.qemu.guest_agent.0"></target>`,
			`<memballoon model="none"></memballoon>`,
			`<seclabel type="static" model="dac" relabel="no">`,
			`<label>+0:+0</label>`,
		},
		not: []string{"selinux", "<cpu", "<loader"},
	}, {
		name:   "kvm on an SELinux host",
		spec:   microSpec,
		params: domainParams{Accel: "kvm", SecModels: []string{"dac", "selinux"}},
		want:   []string{`<domain type="kvm">`, `<cpu mode="host-passthrough">`, `model="dac" relabel="no"`, `<seclabel type="none" model="selinux">`},
	}, {
		name: "sata boot, raw disk, e1000, acpi off",
		spec: with(func(s *driver.StartSpec) {
			s.Hardware.Storage = []spec.Controller{{Name: "SATA", Bus: spec.BusSATA, Devices: []*spec.Device{nil, {DeviceType: spec.DeviceDVD}}}}
			s.Hardware.BootMountPoint = &spec.MountPoint{Controller: "SATA", Slot: 0}
			s.Hardware.ACPIEnabled = spec.Bool(false)
			s.Hardware.Network = []spec.NIC{{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterE1000, MACAddress: "52:54:00:aa:00:03"}}
			s.NICs = []driver.NIC{{SSHPort: 40023}}
			s.Disk = driver.Disk{Path: testDir + "/disk.img", Format: "raw"}
			s.Seed = ""
		}),
		params: tcg,
		want: []string{
			`<driver name="qemu" type="raw" discard="unmap"></driver>`,
			`<target dev="sda" bus="sata"></target>`,
			`<address type="drive" controller="0" bus="0" target="0" unit="0"></address>`,
			`<disk device="cdrom">`, // empty: no source, so no type
			`<target dev="sdb" bus="sata"></target>`,
			`<address type="drive" controller="0" bus="0" target="0" unit="1"></address>`,
			`<controller type="sata" index="0"></controller>`,
			`<interface type="user">`, `<model type="e1000"></model>`, `<alias name="ua-net0"></alias>`,
		},
		not: []string{"<acpi>", "<backingStore", "cidata"},
	}, {
		name: "scsi without a dvd: the seed gets a controller of its own",
		spec: with(func(s *driver.StartSpec) {
			s.Hardware.Storage = []spec.Controller{{Name: "SCSI", Bus: spec.BusSCSI, Devices: []*spec.Device{nil}}}
			s.Hardware.BootMountPoint = &spec.MountPoint{Controller: "SCSI", Slot: 0}
		}),
		params: tcg,
		want: []string{
			`<disk type="file" device="disk">`, `<target dev="sda" bus="scsi"></target>`,
			`<disk type="file" device="cdrom">`, `<source file="` + testDir + `/cidata.iso"></source>`, `<target dev="sdb" bus="scsi"></target>`,
			`<address type="drive" controller="1" bus="0" target="0" unit="0"></address>`,
			`<controller type="scsi" index="0" model="virtio-scsi"></controller>`,
			`<controller type="scsi" index="1" model="virtio-scsi"></controller>`,
		},
	}, {
		name: "virtio boot, raw base, unplugged and internal NICs",
		spec: with(func(s *driver.StartSpec) {
			s.Hardware.Storage = []spec.Controller{{Name: "VirtIO", Bus: spec.BusVirtio, Devices: []*spec.Device{nil}}}
			s.Hardware.BootMountPoint = &spec.MountPoint{Controller: "VirtIO", Slot: 0}
			s.Hardware.Network = []spec.NIC{
				{AttachmentType: spec.AttachNone, AdapterType: spec.AdapterVirtio, MACAddress: "52:54:00:aa:00:04"},
				{AttachmentType: spec.AttachInternal, AdapterType: spec.AdapterRTL8139, MACAddress: "52:54:00:aa:00:05"},
			}
			s.NICs = []driver.NIC{{}, {Tap: "vmf-web-1"}}
			s.Disk.BackingFormat = "raw"
			s.Seed = ""
		}),
		params: tcg,
		want: []string{
			`<backingStore type="file"><format type="raw"></format><source file="/var/lib/vmfest/models/images/tiny/disk.qcow2"></source></backingStore>`,
			`<target dev="vda" bus="virtio"></target>`,
			`<interface type="ethernet">`, `<mac address="52:54:00:aa:00:05"></mac>`, `<target dev="vmf-web-1"></target>`, `<model type="rtl8139"></model>`,
		},
		not: []string{"52:54:00:aa:00:04", `type="user"`, "cdrom"},
	}, {
		name: "dvd on virtio", params: tcg, err: "a virtio bus holds hard disks only",
		spec: with(func(s *driver.StartSpec) {
			s.Hardware.Storage = append(s.Hardware.Storage, spec.Controller{Name: "V", Bus: spec.BusVirtio, Devices: []*spec.Device{{DeviceType: spec.DeviceDVD}}})
		}),
	}, {
		name: "second IDE controller", params: tcg, err: "one IDE controller",
		spec: with(func(s *driver.StartSpec) {
			s.Hardware.Storage = append(s.Hardware.Storage, spec.Controller{Name: "IDE 2", Bus: spec.BusIDE})
		}),
	}, {
		name: "IDE slot 4", params: tcg, err: "4 slots",
		spec: with(func(s *driver.StartSpec) { s.Hardware.BootMountPoint.Slot = 4 }),
	}, {
		name: "no such boot controller", params: tcg, err: "boot-mount-point [Nope, 0]: no such controller",
		spec: with(func(s *driver.StartSpec) { s.Hardware.BootMountPoint = &spec.MountPoint{Controller: "Nope"} }),
	}, {
		name: "hard disk without a drive", params: tcg, err: `storage "IDE Controller" slot 1: a hard-disk slot needs a disk`,
		spec: with(func(s *driver.StartSpec) {
			s.Hardware.Storage[0].Devices[1] = &spec.Device{DeviceType: spec.DeviceHardDisk, Volume: "v"}
		}),
	}, {
		name: "relative drive", params: tcg, err: "must be an absolute path",
		spec: with(func(s *driver.StartSpec) {
			s.Hardware.Storage[0].Devices[1] = &spec.Device{DeviceType: spec.DeviceHardDisk, Volume: "v"}
			s.Drives = []driver.Drive{{Controller: spec.DefaultIDEName, Slot: 1, Disk: driver.Disk{Path: "v.qcow2", Format: "qcow2"}}}
		}),
	}, {
		name: "drives: a volume, a raw disk on virtio and an ISO before the seed",
		spec: with(func(s *driver.StartSpec) {
			s.Hardware.Storage[0].Devices = []*spec.Device{nil, {DeviceType: spec.DeviceHardDisk, Volume: "data"}, {DeviceType: spec.DeviceDVD, Location: "/iso/a.iso"}, {DeviceType: spec.DeviceDVD}}
			s.Hardware.Storage = append(s.Hardware.Storage, spec.Controller{Name: "V", Bus: spec.BusVirtio, Devices: []*spec.Device{{DeviceType: spec.DeviceHardDisk, Location: "/d/raw.img"}}})
			s.Drives = []driver.Drive{
				{Controller: spec.DefaultIDEName, Slot: 1, Disk: driver.Disk{Path: "/vol/data.qcow2", Format: "qcow2"}},
				{Controller: spec.DefaultIDEName, Slot: 2, Disk: driver.Disk{Path: "/iso/a.iso", Format: "raw"}},
				{Controller: "V", Slot: 0, Disk: driver.Disk{Path: "/d/raw.img", Format: "raw"}},
			}
		}),
		params: tcg,
		want: []string{
			`<source file="/vol/data.qcow2"></source><backingStore></backingStore><target dev="hdb" bus="ide"></target>`,
			`<source file="/iso/a.iso"></source><target dev="hdc" bus="ide"></target><readonly></readonly>`,
			`<source file="` + testDir + `/cidata.iso"></source><target dev="hdd" bus="ide"></target>`,
			`<driver name="qemu" type="raw" discard="unmap"></driver><source file="/d/raw.img"></source><target dev="vda" bus="virtio"></target>`,
		},
	}, {
		name: "host-only without a tap", params: tcg, err: "network[0]: a host-only adapter needs a tap",
		spec: with(func(s *driver.StartSpec) { s.NICs[0].Tap = "" }),
	}, {
		name: "unknown adapter", params: tcg, err: `network[1].adapter-type "ne2k": not supported`,
		spec: with(func(s *driver.StartSpec) { s.Hardware.Network[1].AdapterType = "ne2k" }),
	}, {
		name: "no MAC", params: tcg, err: "network[0]: no MAC address assigned",
		spec: with(func(s *driver.StartSpec) { s.Hardware.Network[0].MACAddress = "" }),
	}, {
		name: "bad accelerator", params: domainParams{Accel: "hvf"}, err: `accelerator "hvf": allowed: kvm, tcg`,
		spec: microSpec,
	}, {
		name: "relative directory", params: tcg, err: "must be an absolute path",
		spec: with(func(s *driver.StartSpec) { s.Dir = "machines/web" }),
	}, {
		name: "disk format", params: tcg, err: `disk format "vmdk": allowed: qcow2, raw`,
		spec: with(func(s *driver.StartSpec) { s.Disk.Format = "vmdk" }),
	}, {
		name: "efi without firmware", params: domainParams{Accel: "tcg", OVMF: "/nonexistent/OVMF.fd"}, err: "firmware efi needs the OVMF image /nonexistent/OVMF.fd",
		spec: with(func(s *driver.StartSpec) { s.Hardware.Firmware = spec.FirmwareEFI }),
	}}
}

// betweenTags is the indentation Marshal puts between elements.
var betweenTags = regexp.MustCompile(`>\s+<`)

func TestDomainXML(t *testing.T) {
	for _, tc := range xmlCases() {
		t.Run(tc.name, func(t *testing.T) {
			def, err := domainXML(tc.spec(), tc.params)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			doc, err := def.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			doc = betweenTags.ReplaceAllString(doc, "><")
			rest := doc
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("missing (or out of order) %s\nin:\n%s", w, doc)
				}
				rest = rest[i+len(w):]
			}
			for _, n := range tc.not {
				if strings.Contains(doc, n) {
					t.Errorf("holds %s:\n%s", n, doc)
				}
			}
		})
	}
}

func TestHostfwds(t *testing.T) {
	got := hostfwds(microSpec())
	want := []hostfwd{
		{"hostua-net1", "tcp:127.0.0.1:40022-:22", "network[1] SSH forward 127.0.0.1:40022"},
		{"hostua-net1", "tcp:127.0.0.1:8080-:80", `network[1].nat-rules "web" (tcp 127.0.0.1:8080)`},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestDomainName(t *testing.T) {
	for _, tc := range []struct {
		m    driver.Machine
		want string
	}{
		{driver.Machine{Name: "web", ID: "3f2a9c1e77d04b8a"}, "vmfest-web-3f2a9c1e"},
		{driver.Machine{Name: "db", ID: "abc"}, "vmfest-db-abc"},
		{driver.Machine{Name: "x"}, "vmfest-x"},
	} {
		if got := DomainName(tc.m); got != tc.want {
			t.Errorf("DomainName(%+v) = %s, want %s", tc.m, got, tc.want)
		}
	}
}

func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		uri, socket, err string
	}{
		{"qemu:///system", DefaultSocket, ""},
		{"qemu+unix:///system?socket=/tmp/l.sock", "/tmp/l.sock", ""},
		{"qemu:///session", "", "only qemu:///system has a known socket"},
		{"qemu+ssh://host/system", "", "allowed: qemu:///system"},
		{"xen:///system", "", "allowed: qemu:///system"},
	} {
		ep, err := parseURI(tc.uri)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.uri, err, tc.err)
			}
			continue
		}
		if err != nil || ep.socket != tc.socket || ep.name != "qemu:///system" {
			t.Errorf("%s: %+v, %v", tc.uri, ep, err)
		}
	}
}

func TestVMState(t *testing.T) {
	shutdown := int32(golibvirt.DomainShutoffShutdown)
	destroyed := int32(golibvirt.DomainShutoffDestroyed)
	crashed := int32(golibvirt.DomainShutoffCrashed)
	for _, tc := range []struct {
		st     golibvirt.DomainState
		reason int32
		run    bool
		want   driver.State
	}{
		{golibvirt.DomainRunning, 1, true, driver.Running},
		{golibvirt.DomainPaused, int32(golibvirt.DomainPausedUser), true, driver.Paused},
		{golibvirt.DomainPaused, int32(golibvirt.DomainPausedStartingUp), true, driver.Paused},
		{golibvirt.DomainPaused, int32(golibvirt.DomainPausedIoerror), true, driver.Aborted},
		{golibvirt.DomainPaused, int32(golibvirt.DomainPausedCrashed), true, driver.Aborted},
		{golibvirt.DomainShutdown, 1, true, driver.Stopping},
		{golibvirt.DomainCrashed, 0, true, driver.Aborted},
		{golibvirt.DomainShutoff, shutdown, true, driver.PoweredOff},
		{golibvirt.DomainShutoff, destroyed, true, driver.Aborted},
		{golibvirt.DomainShutoff, crashed, true, driver.Aborted},
		{golibvirt.DomainShutoff, crashed, false, driver.PoweredOff},
		{golibvirt.DomainShutoff, destroyed, false, driver.PoweredOff},
		{golibvirt.DomainShutoff, 0, false, driver.PoweredOff},
	} {
		if got := vmState(tc.st, tc.reason, tc.run); got != tc.want {
			t.Errorf("vmState(%d, %d, run %v) = %s, want %s", tc.st, tc.reason, tc.run, got, tc.want)
		}
	}
}

// TestDefineXMLCases: libvirtd accepts every valid case's definition.
func TestDefineXMLCases(t *testing.T) {
	needLibvirtd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dial(ctx, endpoint{socket: DefaultSocket, name: "qemu:///system"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	for _, tc := range xmlCases() {
		if tc.err != "" {
			continue
		}
		def, err := domainXML(tc.spec(), tc.params)
		if err != nil {
			t.Fatal(err)
		}
		if def.Type == "kvm" {
			continue // this host may have no usable KVM
		}
		doc, err := def.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		dom, err := c.DomainDefineXMLFlags(doc, 0)
		if err != nil {
			t.Errorf("%s: libvirt refused the definition: %v\n%s", tc.name, err, doc)
			continue
		}
		if err := c.DomainUndefineFlags(dom, 0); err != nil {
			t.Errorf("%s: undefine: %v", tc.name, err)
		}
	}
}
