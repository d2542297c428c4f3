package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
)

func hw(modify func(*spec.Hardware)) spec.Hardware {
	h := spec.BuiltinHardware()["micro"]
	// VMFest's IDE storage, boot disk at [IDE Controller, 0] (micro's own boots from virtio).
	h.Storage, h.BootMountPoint = spec.DefaultStorage(), &spec.MountPoint{Controller: spec.DefaultIDEName}
	h.Network[0].MACAddress = "52:54:00:00:00:01"
	h.Network[1].MACAddress = "52:54:00:00:00:02"
	if modify != nil {
		modify(&h)
	}
	return h
}

func TestArgs(t *testing.T) {
	tests := []struct {
		name     string
		hardware spec.Hardware
		accel    string
		want     []string // substrings of the joined command line
		not      []string
	}{
		{"micro on ide", hw(nil), AccelTCG, []string{
			"-machine pc,accel=tcg", "-m 512", "-smp 1", "-nodefaults",
			"-chardev ringbuf,id=serial0,size=2097152", "-serial chardev:serial0",
			"-qmp unix:/m/x/qmp.sock,server=on,wait=off",
			"virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
			"-pidfile /m/x/qemu.pid", "-daemonize",
			`-blockdev {"driver":"file","node-name":"ctl0-0-file","filename":"/img/d.qcow2","discard":"unmap"}`,
			`-blockdev {"driver":"qcow2","node-name":"ctl0-0","file":"ctl0-0-file","backing":null,"discard":"unmap"}`,
			"-device ide-hd,bus=ide.0,unit=0,drive=ctl0-0,id=ctl0-0-dev,bootindex=0",
			"-drive if=none,id=ctl0-2,media=cdrom,readonly=on -device ide-cd,bus=ide.1,unit=0,drive=ctl0-2,id=ctl0-2-dev",
			"-netdev tap,id=net0,ifname=vmt0,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,romfile=",
			"-netdev user,id=net1,hostfwd=tcp:127.0.0.1:2222-:22 -device virtio-net-pci,netdev=net1,mac=52:54:00:00:00:02",
		}, []string{"-cpu host", "acpi=off", "cidata", "file=/img/d.qcow2"}},
		{"nat rules", hw(func(h *spec.Hardware) {
			h.Network[1].NATRules = []spec.NATRule{
				{Name: "web", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 8080, GuestPort: 80},
				{Name: "dns", Protocol: "udp", HostIP: "0.0.0.0", HostPort: 5353, GuestPort: 53},
			}
		}), AccelTCG, []string{"-netdev user,id=net1,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53 "}, nil},
		{"bridged and internal", hw(func(h *spec.Hardware) {
			h.Network[0] = spec.NIC{AttachmentType: spec.AttachBridged, AdapterType: spec.AdapterVirtio, BridgedInterface: "br0", MACAddress: "52:54:00:00:00:01"}
			h.Network[1] = spec.NIC{AttachmentType: spec.AttachInternal, AdapterType: spec.AdapterE1000, InternalNetwork: "intnet", MACAddress: "52:54:00:00:00:02"}
		}), AccelTCG, []string{"-netdev tap,id=net0,ifname=vmt0,script=no,downscript=no", "-netdev tap,id=net1,ifname=vmt1,script=no,downscript=no -device e1000,netdev=net1"}, []string{"user,"}},
		{"kvm uses the host cpu", hw(nil), AccelKVM, []string{"accel=kvm", "-cpu host"}, nil},
		{"acpi off", hw(func(h *spec.Hardware) { h.ACPIEnabled = spec.Bool(false) }), AccelTCG, []string{"pc,accel=tcg,acpi=off"}, nil},
		{"cidata in the empty dvd slot", hw(nil), AccelTCG, []string{"-drive if=none,id=ctl0-2,media=cdrom,readonly=on,file=/m/x/cidata.iso,format=raw -device ide-cd,bus=ide.1,unit=0,drive=ctl0-2,id=ctl0-2-dev"}, []string{"cidata-scsi"}},
		{"cidata without a dvd slot", hw(func(h *spec.Hardware) {
			h.Storage = []spec.Controller{{Name: "VirtIO", Bus: spec.BusVirtio}}
			h.BootMountPoint = &spec.MountPoint{Controller: "VirtIO", Slot: 0}
		}), AccelTCG, []string{"-drive if=none,id=cidata,media=cdrom,readonly=on,format=raw,file=/m/x/cidata.iso", "-device virtio-scsi-pci,id=cidata-scsi", "-device scsi-cd,bus=cidata-scsi.0,channel=0,scsi-id=0,lun=0,drive=cidata"}, nil},
		{"adapters", hw(func(h *spec.Hardware) {
			h.Network = []spec.NIC{
				{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterE1000, MACAddress: "52:54:00:00:00:02"},
				{AttachmentType: spec.AttachNone, AdapterType: spec.AdapterVirtio, MACAddress: "52:54:00:00:00:03"},
				{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterPCNet, MACAddress: "52:54:00:00:00:04"},
			}
		}), AccelTCG, []string{"-device e1000,netdev=net0,mac=52:54:00:00:00:02", "-device pcnet,netdev=net2,mac=52:54:00:00:00:04"}, []string{"net1", "00:03"}},
		{"sata scsi virtio", hw(func(h *spec.Hardware) {
			h.Storage = []spec.Controller{
				{Name: "SATA", Bus: spec.BusSATA, Devices: []*spec.Device{nil, {DeviceType: spec.DeviceDVD}}},
				{Name: "SCSI", Bus: spec.BusSCSI, Devices: []*spec.Device{nil, nil, {DeviceType: spec.DeviceDVD}}},
				{Name: "VirtIO", Bus: spec.BusVirtio},
			}
			h.BootMountPoint = &spec.MountPoint{Controller: "VirtIO", Slot: 1}
		}), AccelTCG, []string{
			"-device ahci,id=ctl0", "-device ide-cd,bus=ctl0.1,drive=ctl0-1,id=ctl0-1-dev",
			"-device virtio-scsi-pci,id=ctl1", "-device scsi-cd,bus=ctl1.0,channel=0,scsi-id=2,lun=0,drive=ctl1-2,id=ctl1-2-dev",
			"-device virtio-blk-pci,drive=ctl2-1,id=ctl2-1-dev,bootindex=0",
		}, []string{"ide.0"}},
		{"drives: a volume, a raw disk and an ISO", hw(func(h *spec.Hardware) {
			h.Storage[0].Devices = []*spec.Device{nil, {DeviceType: spec.DeviceHardDisk, Volume: "data"}, {DeviceType: spec.DeviceDVD, Location: "/iso/a,b.iso"}, {DeviceType: spec.DeviceDVD}}
			h.Storage = append(h.Storage, spec.Controller{Name: "V", Bus: spec.BusVirtio, Devices: []*spec.Device{{DeviceType: spec.DeviceHardDisk, Location: "/d/raw.img"}}})
		}), AccelTCG, []string{
			`-blockdev {"driver":"file","node-name":"ctl0-1-file","filename":"/vol/data.qcow2","discard":"unmap"}`,
			`-blockdev {"driver":"qcow2","node-name":"ctl0-1","file":"ctl0-1-file","backing":null,"discard":"unmap"} -device ide-hd,bus=ide.0,unit=1,drive=ctl0-1,id=ctl0-1-dev `,
			"-drive if=none,id=ctl0-2,media=cdrom,readonly=on,file=/iso/a,,b.iso,format=raw -device ide-cd,bus=ide.1,unit=0,drive=ctl0-2,id=ctl0-2-dev",
			"-drive if=none,id=ctl0-3,media=cdrom,readonly=on,file=/m/x/cidata.iso,format=raw -device ide-cd,bus=ide.1,unit=1,drive=ctl0-3,id=ctl0-3-dev",
			`-blockdev {"driver":"raw","node-name":"ctl1-0","file":"ctl1-0-file","discard":"unmap"} -device virtio-blk-pci,drive=ctl1-0,id=ctl1-0-dev`,
		}, []string{"cidata-scsi", "ctl1-0,bootindex"}},
		{"loadvm", hw(nil), AccelTCG, []string{"-loadvm s1"}, []string{"-incoming"}},
		{"sata boot", hw(func(h *spec.Hardware) {
			h.Storage = []spec.Controller{{Name: "SATA", Bus: spec.BusSATA}}
			h.BootMountPoint = &spec.MountPoint{Controller: "SATA", Slot: 3}
		}), AccelTCG, []string{"-device ide-hd,bus=ctl0.3,drive=ctl0-3,id=ctl0-3-dev,bootindex=0"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Name: "x", Dir: "/m/x", Hardware: tt.hardware, Disk: Disk{Path: "/img/d.qcow2", Format: "qcow2"}, Accel: tt.accel,
				NICs: []NICBackend{{Tap: "vmt0"}, {Tap: "vmt1", SSHPort: 2222}, {}}}
			if strings.HasPrefix(tt.name, "cidata") || strings.HasPrefix(tt.name, "drives") {
				cfg.CIData = "/m/x/cidata.iso"
			}
			if tt.name == "loadvm" {
				cfg.LoadVM = "s1"
			}
			if strings.HasPrefix(tt.name, "drives") {
				cfg.Drives = []driver.Drive{
					{Controller: spec.DefaultIDEName, Slot: 1, Disk: Disk{Path: "/vol/data.qcow2", Format: "qcow2"}},
					{Controller: spec.DefaultIDEName, Slot: 2, Disk: Disk{Path: "/iso/a,b.iso", Format: "raw"}},
					{Controller: "V", Slot: 0, Disk: Disk{Path: "/d/raw.img", Format: "raw"}},
				}
			}
			args, err := cfg.Args()
			if err != nil {
				t.Fatal(err)
			}
			checkLine(t, args, tt.want, tt.not)
		})
	}
}

func TestArgsErrors(t *testing.T) {
	long := "/" + strings.Repeat("d", 120)
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"relative dir", Config{Dir: "m", Hardware: hw(nil), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "raw"}}, "absolute"},
		{"long dir", Config{Dir: long, Hardware: hw(nil), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "raw"}}, "too long"},
		{"accel", Config{Dir: "/m", Hardware: hw(nil), Accel: "hvf", Disk: Disk{Path: "/d", Format: "raw"}}, "allowed: kvm, tcg"},
		{"format", Config{Dir: "/m", Hardware: hw(nil), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "vdi"}}, "allowed: qcow2, raw"},
		{"no mac", Config{Dir: "/m", Hardware: hw(func(h *spec.Hardware) { h.Network[0].MACAddress = "" }), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "raw"}}, "no MAC"},
		{"no tap", Config{Dir: "/m", Hardware: hw(nil), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "raw"}}, "network[0]: a host-only adapter needs a tap"},
		{"relative disk", Config{Dir: "/m", Hardware: hw(nil), Accel: AccelTCG, Disk: Disk{Path: "d.qcow2", Format: "qcow2"}}, "disk path \"d.qcow2\": must be an absolute path"},
		{"backing format", Config{Dir: "/m", Hardware: hw(nil), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "qcow2", BackingPath: "/b", BackingFormat: "vmdk"}}, "backing format \"vmdk\": allowed: qcow2, raw"},
		{"backing without format", Config{Dir: "/m", Hardware: hw(nil), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "qcow2", BackingPath: "/b"}}, "backing format \"\": allowed: qcow2, raw"},
		{"relative backing", Config{Dir: "/m", Hardware: hw(nil), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "qcow2", BackingPath: "b", BackingFormat: "raw"}}, "backing path \"b\": must be an absolute path"},
		{"raw overlay", Config{Dir: "/m", Hardware: hw(nil), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "raw", BackingPath: "/b", BackingFormat: "raw"}}, "only a qcow2 disk has a backing file"},
		{"hard disk without a drive", Config{Dir: "/m", Hardware: hw(func(h *spec.Hardware) {
			h.Storage[0].Devices[1] = &spec.Device{DeviceType: spec.DeviceHardDisk, Volume: "v"}
		}), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "raw"}, NICs: []NICBackend{{Tap: "t"}, {}}}, `storage "IDE Controller" slot 1: a hard-disk slot needs a disk`},
		{"relative drive", Config{Dir: "/m", Hardware: hw(func(h *spec.Hardware) {
			h.Storage[0].Devices[1] = &spec.Device{DeviceType: spec.DeviceHardDisk, Volume: "v"}
		}), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "raw"}, NICs: []NICBackend{{Tap: "t"}, {}},
			Drives: []driver.Drive{{Controller: spec.DefaultIDEName, Slot: 1, Disk: Disk{Path: "v.qcow2", Format: "qcow2"}}}}, "must be an absolute path"},
		{"efi without ovmf", Config{Dir: "/m", Hardware: hw(func(h *spec.Hardware) { h.Firmware = spec.FirmwareEFI }), Accel: AccelTCG, Disk: Disk{Path: "/d", Format: "raw"}, OVMF: "/nonexistent/OVMF.fd"}, "ovmf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.Args()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestDiskNodes checks that the boot disk is opened as -blockdev nodes with
// its format given and its whole chain spelled out: QEMU opens no file an
// image names inside itself (a backing file, or a format guessed from its
// first bytes).
func TestDiskNodes(t *testing.T) {
	tests := []struct {
		name string
		disk Disk
		want []string // the -blockdev values, in order
	}{
		{"qcow2 used directly", Disk{Path: "/m/x/d.qcow2", Format: "qcow2"}, []string{
			`{"driver":"file","node-name":"ctl0-0-file","filename":"/m/x/d.qcow2","discard":"unmap"}`,
			`{"driver":"qcow2","node-name":"ctl0-0","file":"ctl0-0-file","backing":null,"discard":"unmap"}`,
		}},
		{"raw used directly", Disk{Path: "/d.raw", Format: "raw"}, []string{
			`{"driver":"file","node-name":"ctl0-0-file","filename":"/d.raw","discard":"unmap"}`,
			`{"driver":"raw","node-name":"ctl0-0","file":"ctl0-0-file","discard":"unmap"}`,
		}},
		{"overlay on a qcow2 base", Disk{Path: "/m/x/disk.qcow2", Format: "qcow2", BackingPath: "/models/images/t/disk.qcow2", BackingFormat: "qcow2"}, []string{
			`{"driver":"file","node-name":"ctl0-0-base-file","filename":"/models/images/t/disk.qcow2","read-only":true}`,
			`{"driver":"qcow2","node-name":"ctl0-0-base","file":"ctl0-0-base-file","backing":null,"read-only":true}`,
			`{"driver":"file","node-name":"ctl0-0-file","filename":"/m/x/disk.qcow2","discard":"unmap"}`,
			`{"driver":"qcow2","node-name":"ctl0-0","file":"ctl0-0-file","backing":"ctl0-0-base","discard":"unmap"}`,
		}},
		{"overlay on a raw base", Disk{Path: "/m/x/disk.qcow2", Format: "qcow2", BackingPath: "/i/b.raw", BackingFormat: "raw"}, []string{
			`{"driver":"file","node-name":"ctl0-0-base-file","filename":"/i/b.raw","read-only":true}`,
			`{"driver":"raw","node-name":"ctl0-0-base","file":"ctl0-0-base-file","read-only":true}`,
			`{"driver":"file","node-name":"ctl0-0-file","filename":"/m/x/disk.qcow2","discard":"unmap"}`,
			`{"driver":"qcow2","node-name":"ctl0-0","file":"ctl0-0-file","backing":"ctl0-0-base","discard":"unmap"}`,
		}},
		{"names QEMU would parse", Disk{Path: "/i/json:{\"a\",b}.raw", Format: "raw"}, []string{
			`{"driver":"file","node-name":"ctl0-0-file","filename":"/i/json:{\"a\",b}.raw","discard":"unmap"}`,
			`{"driver":"raw","node-name":"ctl0-0","file":"ctl0-0-file","discard":"unmap"}`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Name: "x", Dir: "/m/x", Hardware: hw(nil), Disk: tt.disk, Accel: AccelTCG, NICs: []NICBackend{{Tap: "vmt0"}, {}}}
			args, err := cfg.Args()
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for i, a := range args {
				switch a {
				case "-blockdev":
					got = append(got, args[i+1])
				case "-drive":
					if !strings.Contains(args[i+1], "media=cdrom") {
						t.Errorf("the boot disk is opened with -drive %s", args[i+1])
					}
				}
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("-blockdev nodes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if line := strings.Join(args, " "); !strings.Contains(line, "-device ide-hd,bus=ide.0,unit=0,drive=ctl0-0,id=ctl0-0-dev,bootindex=0") {
				t.Errorf("the boot device is not on the top node: %s", line)
			}
		})
	}
}

func TestEscapeComma(t *testing.T) {
	cfg := Config{Name: "x", Dir: "/m,1/x", Hardware: hw(nil), Disk: Disk{Path: "/a,b.qcow2", Format: "qcow2"}, Accel: AccelTCG,
		NICs: []NICBackend{{Tap: "t,0"}}, CIData: "/m,1/x/cidata.iso"}
	args, err := cfg.Args()
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	for _, w := range []string{`"filename":"/a,b.qcow2"`, "unix:/m,,1/x/qmp.sock", "-pidfile /m,1/x/qemu.pid", "ifname=t,,0,", "file=/m,,1/x/cidata.iso,"} {
		if !strings.Contains(line, w) {
			t.Errorf("lacks %q: %s", w, line)
		}
	}
}

func TestChooseAccel(t *testing.T) {
	dir := t.TempDir()
	kvm := filepath.Join(dir, "kvm")
	os.WriteFile(kvm, nil, 0o666)
	withVMX := filepath.Join(dir, "vmx")
	os.WriteFile(withVMX, []byte("processor\t: 0\nflags\t\t: fpu vme vmx sse\n"), 0o644)
	without := filepath.Join(dir, "novmx")
	os.WriteFile(without, []byte("processor\t: 0\nflags\t\t: fpu vme sse hypervisor\n"), 0o644)
	tests := []struct {
		name, want string
		host       Host
		accel      string
		note       bool
	}{
		{"kvm and vmx", AccelAuto, Host{kvm, withVMX}, AccelKVM, false},
		{"no device", "", Host{filepath.Join(dir, "none"), withVMX}, AccelTCG, true},
		{"device without vmx/svm", AccelAuto, Host{kvm, without}, AccelTCG, true},
		{"forced tcg", "tcg", Host{kvm, withVMX}, AccelTCG, false},
		{"forced kvm", "KVM", Host{filepath.Join(dir, "none"), without}, AccelKVM, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			accel, note, err := ChooseAccel(tt.want, tt.host)
			if err != nil {
				t.Fatal(err)
			}
			if accel != tt.accel || (note != "") != tt.note {
				t.Fatalf("got %s %q", accel, note)
			}
		})
	}
	if _, _, err := ChooseAccel("xen", DefaultHost()); err == nil || !strings.Contains(err.Error(), "allowed: kvm, tcg, auto") {
		t.Fatalf("err = %v", err)
	}
}

// TestMemoryFileArgs checks the command lines of a memory template's
// making (RAM shared into the new file, disks read-only, taps nameless, no
// forwards) and of a machine started from one (RAM a private mapping of
// the file, the state read once x-ignore-shared is set: -incoming defer).
func TestMemoryFileArgs(t *testing.T) {
	in, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	base := func() Config {
		return Config{Name: "x", Dir: "/m/x", Hardware: hw(nil), Accel: AccelTCG,
			Disk:     Disk{Path: "/m/x/d.qcow2", Format: "qcow2", BackingPath: "/img/b.qcow2", BackingFormat: "qcow2"},
			NICs:     []NICBackend{{Tap: "vmt0"}, {SSHPort: 2222}},
			Incoming: in}
	}
	tests := []struct {
		name      string
		modify    func(*Config)
		want, not []string
	}{
		{"making a template", func(c *Config) { c.MemoryFile, c.MemoryShared, c.Template = "/m/x/.t,1/ram", true, true }, []string{
			"-machine pc,accel=tcg,memory-backend=pc.ram ",
			"-object memory-backend-file,id=pc.ram,size=512M,mem-path=/m/x/.t,,1/ram,share=on",
			"-S -incoming fd:3",
			`{"driver":"file","node-name":"ctl0-0-file","filename":"/m/x/d.qcow2","read-only":true,"discard":"unmap"}`,
			`{"driver":"qcow2","node-name":"ctl0-0","file":"ctl0-0-file","backing":"ctl0-0-base","read-only":true,"discard":"unmap"}`,
			"-netdev tap,id=net0,script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01",
			"-netdev user,id=net1 -device virtio-net-pci,netdev=net1,mac=52:54:00:00:00:02",
		}, []string{"share=off", "ifname", "hostfwd", "defer"}},
		{"making a template with a scratch disk", func(c *Config) {
			c.MemoryFile, c.MemoryShared, c.Template, c.Scratch = "/m/x/.t/ram", true, true, "/m/x/.t/run/scratch.qcow2"
		}, []string{
			`{"driver":"file","node-name":"ctl0-0-ro-file","filename":"/m/x/d.qcow2","read-only":true,"discard":"unmap"}`,
			`{"driver":"qcow2","node-name":"ctl0-0-ro","file":"ctl0-0-ro-file","backing":"ctl0-0-base","read-only":true,"discard":"unmap"}`,
			`{"driver":"file","node-name":"ctl0-0-file","filename":"/m/x/.t/run/scratch.qcow2"}`,
			`{"driver":"qcow2","node-name":"ctl0-0","file":"ctl0-0-file","backing":"ctl0-0-ro"}`,
			"drive=ctl0-0,",
		}, []string{`"filename":"/m/x/d.qcow2","discard"`}},
		{"a clone of a template", func(c *Config) { c.MemoryFile, c.IgnoreShared = "/m/x/saved.ram", true }, []string{
			"-machine pc,accel=tcg,memory-backend=pc.ram ",
			"-object memory-backend-file,id=pc.ram,size=512M,mem-path=/m/x/saved.ram,share=off",
			"-S -incoming defer",
			"-netdev tap,id=net0,ifname=vmt0,script=no,downscript=no",
			"hostfwd=tcp:127.0.0.1:2222-:22",
			`{"driver":"file","node-name":"ctl0-0-file","filename":"/m/x/d.qcow2","discard":"unmap"}`,
		}, []string{"share=on", "fd:3", `"filename":"/m/x/d.qcow2","read-only"`}},
		{"no memory file", nil, []string{"-machine pc,accel=tcg ", "-S -incoming fd:3"}, []string{"memory-backend", "defer"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			if tt.modify != nil {
				tt.modify(&cfg)
			}
			args, err := cfg.Args()
			if err != nil {
				t.Fatal(err)
			}
			checkLine(t, args, tt.want, tt.not)
		})
	}
	bad := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"ignore-shared into shared RAM", func(c *Config) { c.MemoryFile, c.MemoryShared, c.IgnoreShared = "/r", true, true }, "private memory file"},
		{"ignore-shared without a file", func(c *Config) { c.IgnoreShared = true }, "private memory file"},
		{"ignore-shared without a stream", func(c *Config) { c.MemoryFile, c.IgnoreShared, c.Incoming = "/r", true, nil }, "private memory file"},
		{"relative memory file", func(c *Config) { c.MemoryFile = "ram" }, `memory file "ram": must be an absolute path`},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			tt.modify(&cfg)
			if _, err := cfg.Args(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// checkLine checks that the command line args holds every string of want
// and none of not.
func checkLine(t *testing.T, args, want, not []string) {
	t.Helper()
	line := strings.Join(args, " ")
	for _, w := range want {
		if !strings.Contains(line, w) {
			t.Errorf("command line lacks %q:\n%s", w, line)
		}
	}
	for _, n := range not {
		if strings.Contains(line, n) {
			t.Errorf("command line has %q:\n%s", n, line)
		}
	}
}
