package libvirt

import (
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"libvirt.org/go/libvirtxml"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/spec"
)

// Namespace is the XML namespace of the <metadata> element that marks a
// domain as vmfest's: the driver acts only on domains that carry it with
// the machine's directory and instance id.
const Namespace = "https://github.com/vmfest/vmfest/driver/libvirt"

// SerialLog is the console log libvirt's virtlogd keeps in the machine
// directory; virtlogd rotates it to SerialLog.1 (and .2, .3) when it
// reaches its max_size (2 MiB by default, virtlogd.conf).
const SerialLog = "serial.log"

// natAliasPrefix names a nat NIC's device: libvirt calls its -netdev
// "host" + the alias, which hostfwd_add needs. User aliases must begin
// with "ua-".
const natAliasPrefix = "ua-net"

// OVMF is the EFI firmware image a machine with firmware efi boots.
const OVMF = "/usr/share/ovmf/OVMF.fd"

// DomainName is the libvirt domain of a machine: vmfest-<name>-<the first
// 8 characters of its instance id>, so a user recognises it in virsh and a
// machine made again under the same name never meets its predecessor's
// domain.
func DomainName(m driver.Machine) string {
	id := m.ID
	if len(id) > 8 {
		id = id[:8]
	}
	if id == "" {
		return "vmfest-" + m.Name
	}
	return "vmfest-" + m.Name + "-" + id
}

// mark is the <metadata> element that marks a domain as vmfest's.
type mark struct {
	XMLName xml.Name `xml:"machine"` // DomainGetMetadata returns it without its namespace
	Name    string   `xml:"name"`
	ID      string   `xml:"id"`
	Dir     string   `xml:"dir"`
}

// markXML is the element as DomainSetMetadata and the domain XML carry it,
// with the "vmfest" prefix.
func markXML(m driver.Machine) string {
	var b strings.Builder
	b.WriteString(`<vmfest:machine xmlns:vmfest="` + Namespace + `">`)
	for _, kv := range [][2]string{{"name", m.Name}, {"id", m.ID}, {"dir", m.Dir}} {
		b.WriteString("<vmfest:" + kv[0] + ">")
		xml.EscapeText(&b, []byte(kv[1]))
		b.WriteString("</vmfest:" + kv[0] + ">")
	}
	b.WriteString("</vmfest:machine>")
	return b.String()
}

// parseMark reads the element DomainGetMetadata returns.
func parseMark(s string) (mark, error) {
	var mk mark
	if err := xml.Unmarshal([]byte(s), &mk); err != nil {
		return mark{}, err
	}
	return mk, nil
}

// domainParams is what the domain XML is built from besides the spec.
type domainParams struct {
	// Accel is kvm or tcg.
	Accel string
	// SecModels are the host's security drivers (ConnectGetCapabilities'
	// secmodel): dac, selinux, apparmor, none.
	SecModels []string
	// OVMF is the EFI firmware; default OVMF.
	OVMF string
}

// domainXML returns the libvirt domain definition of a machine.
//
// Mapping, the same as driver/qemu's command line:
//   - memory-size MiB and cpu-count; domain type kvm (with the host's CPU)
//     or qemu (TCG); machine pc; acpi-enabled as <features><acpi/>.
//   - storage controllers: ide is the pc machine's own controller (slots
//     0-3 as bus slot/2, unit slot%2), sata an AHCI controller, scsi a
//     virtio-scsi controller (slot = SCSI target), virtio a virtio-blk disk
//     per slot; the boot disk at the boot-mount-point with boot order 1;
//     dvd slots as empty read-only CD-ROMs, the first holding the seed ISO
//     (else the seed gets a virtio-scsi controller of its own).
//   - the boot disk with its chain spelled out: <driver type=FORMAT>, and a
//     <backingStore> naming the base's format and file with an empty
//     <backingStore/> of its own, so libvirt probes nothing.
//   - NICs in slot order with their MACs and models, no option ROM: nat as
//     user-mode networking (its forwards are added by Start through the
//     monitor, see hostfwds), host-only/bridged/internal as type ethernet on
//     the tap vmfest named (libvirt creates it; vmfest plugs it), none left
//     out.
//   - the console on the first serial port, a pty whose output virtlogd
//     keeps in DIR/serial.log (truncated at each start, rotated at 2 MiB);
//     the guest agent's virtio-serial port, which libvirt connects to.
//   - <seclabel type=static model=dac relabel=no> with label +0:+0: QEMU
//     runs as root and libvirt chowns nothing, so it opens the root-owned
//     models and machine directories as they are and never changes the
//     base image's or the user's files. An SELinux host gets
//     <seclabel type=none model=selinux> for the same reason (its dynamic
//     labelling would relabel the files). AppArmor keeps libvirt's default:
//     it writes a per-domain profile naming the files and relabels nothing.
//   - <metadata> marks the domain as vmfest's (Namespace).
func domainXML(s driver.StartSpec, p domainParams) (*libvirtxml.Domain, error) {
	h := s.Hardware
	if s.Dir == "" || !strings.HasPrefix(s.Dir, "/") {
		return nil, fmt.Errorf("machine directory %q: must be an absolute path", s.Dir)
	}
	if s.Name == "" {
		return nil, errors.New("machine name: must not be empty")
	}
	if err := s.Disk.Validate(); err != nil {
		return nil, err
	}
	if h.BootMountPoint == nil {
		return nil, errors.New("hardware has no boot-mount-point")
	}
	if h.MemorySize <= 0 {
		return nil, fmt.Errorf("memory-size %d: must be a positive number of MiB", h.MemorySize)
	}
	if h.CPUCount <= 0 {
		return nil, fmt.Errorf("cpu-count %d: must be at least 1", h.CPUCount)
	}
	d := &libvirtxml.Domain{
		Name:        DomainName(s.Machine),
		Title:       "vmfest machine " + s.Name,
		Description: "Made by vmfest from the machine in " + s.Dir + "; vmfest redefines it at each start and undefines it when the machine is destroyed.",
		Metadata:    &libvirtxml.DomainMetadata{XML: markXML(s.Machine)},
		Memory:      &libvirtxml.DomainMemory{Value: uint(h.MemorySize), Unit: "MiB"},
		VCPU:        &libvirtxml.DomainVCPU{Value: uint(h.CPUCount)},
		OS: &libvirtxml.DomainOS{
			Type: &libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64", Machine: "pc"},
		},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices:    &libvirtxml.DomainDeviceList{},
	}
	if s.GenID != "" {
		if !driver.ValidGenID(s.GenID) {
			return nil, fmt.Errorf("VM generation ID %q: must be a GUID (8-4-4-4-12 hex digits)", s.GenID)
		}
		d.GenID = &libvirtxml.DomainGenID{Value: s.GenID}
	}
	switch p.Accel {
	case qemu.AccelKVM:
		d.Type = "kvm"
		d.CPU = &libvirtxml.DomainCPU{Mode: "host-passthrough"}
	case qemu.AccelTCG:
		d.Type = "qemu"
	default:
		return nil, fmt.Errorf("accelerator %q: allowed: kvm, tcg", p.Accel)
	}
	if h.ACPIEnabled == nil || *h.ACPIEnabled {
		d.Features = &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}}
	}
	if h.Firmware == spec.FirmwareEFI {
		fw := p.OVMF
		if fw == "" {
			fw = OVMF
		}
		if _, err := os.Stat(fw); err != nil {
			return nil, fmt.Errorf("firmware efi needs the OVMF image %s (Debian package ovmf): %w", fw, err)
		}
		d.OS.Loader = &libvirtxml.DomainLoader{Path: fw, Readonly: "yes", Type: "rom"}
	}
	if err := addStorage(d, s); err != nil {
		return nil, err
	}
	if err := addNICs(d, s); err != nil {
		return nil, err
	}
	port := uint(0)
	d.Devices.Serials = []libvirtxml.DomainSerial{{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port},
		Log:    &libvirtxml.DomainChardevLog{File: s.Dir + "/" + SerialLog, Append: "off"},
	}}
	d.Devices.Consoles = []libvirtxml.DomainConsole{{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port},
	}}
	d.Devices.Channels = []libvirtxml.DomainChannel{{
		Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
		Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: qemu.AgentPortName}},
	}}
	// -nodefaults as driver/qemu: no USB controller, no balloon, no display.
	d.Devices.Controllers = append(d.Devices.Controllers, libvirtxml.DomainController{Type: "usb", Model: "none"})
	d.Devices.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "none"}
	if slices.Contains(p.SecModels, "dac") {
		d.SecLabel = append(d.SecLabel, libvirtxml.DomainSecLabel{Type: "static", Model: "dac", Relabel: "no", Label: "+0:+0"})
	}
	if slices.Contains(p.SecModels, "selinux") {
		d.SecLabel = append(d.SecLabel, libvirtxml.DomainSecLabel{Type: "none", Model: "selinux"})
	}
	return d, nil
}

// diskNames hands out unique target device names per prefix (hd, sd, vd).
type diskNames map[string]int

func (n diskNames) next(prefix string) string {
	i := n[prefix]
	n[prefix] = i + 1
	name := ""
	for i >= 0 {
		name = string(rune('a'+i%26)) + name
		i = i/26 - 1
	}
	return prefix + name
}

func addStorage(d *libvirtxml.Domain, s driver.StartSpec) error {
	h := s.Hardware
	bp := *h.BootMountPoint
	names := diskNames{}
	booted := false
	seeded := s.Seed == ""
	ide := 0
	var ctlIndex = map[string]uint{} // libvirt controller type -> next index
	for ci, ctl := range h.Storage {
		var index uint
		switch ctl.Bus {
		case spec.BusIDE:
			if ide++; ide > 1 {
				return fmt.Errorf("storage[%d]: the pc machine has one IDE controller and %q would be a second; use sata or scsi", ci, ctl.Name)
			}
		case spec.BusSATA:
			index = ctlIndex["sata"]
			ctlIndex["sata"]++
			d.Devices.Controllers = append(d.Devices.Controllers, libvirtxml.DomainController{Type: "sata", Index: &index})
		case spec.BusSCSI:
			index = ctlIndex["scsi"]
			ctlIndex["scsi"]++
			d.Devices.Controllers = append(d.Devices.Controllers, libvirtxml.DomainController{Type: "scsi", Model: "virtio-scsi", Index: &index})
		case spec.BusVirtio:
		default:
			return fmt.Errorf("storage[%d].bus %q: not supported", ci, ctl.Bus)
		}
		slots := h.Slots(ctl)
		if n := len(slots); ctl.Bus == spec.BusIDE && n > 0 && slots[n-1].Index > 3 {
			return fmt.Errorf("storage %q: an IDE controller has 4 slots (0-3), not %d", ctl.Name, slots[n-1].Index+1)
		}
		for _, sl := range slots {
			slot, kind, boot := sl.Index, sl.Kind, sl.Boot
			var disk libvirtxml.DomainDisk
			switch {
			case boot:
				disk = bootDisk(s.Disk)
				disk.Boot = &libvirtxml.DomainDeviceBoot{Order: 1}
				booted = true
			case kind == spec.DeviceDVD:
				disk = cdrom("")
				if dr, ok := s.Drive(ctl.Name, slot); ok {
					if !strings.HasPrefix(dr.Disk.Path, "/") {
						return fmt.Errorf("storage %q slot %d: ISO path %q: must be an absolute path", ctl.Name, slot, dr.Disk.Path)
					}
					disk = cdrom(dr.Disk.Path)
				} else if !seeded {
					disk = cdrom(s.Seed)
					seeded = true
				}
			default:
				dr, ok := s.Drive(ctl.Name, slot)
				if !ok {
					return fmt.Errorf("storage %q slot %d: a hard-disk slot needs a disk (a volume or a location)", ctl.Name, slot)
				}
				if err := dr.Disk.Validate(); err != nil {
					return fmt.Errorf("storage %q slot %d: %w", ctl.Name, slot, err)
				}
				disk = bootDisk(dr.Disk)
			}
			if err := placeDisk(&disk, ctl.Bus, kind, index, slot, names); err != nil {
				return fmt.Errorf("storage %q slot %d: %w", ctl.Name, slot, err)
			}
			d.Devices.Disks = append(d.Devices.Disks, disk)
		}
	}
	if !booted {
		return fmt.Errorf("boot-mount-point %s: no such controller", bp)
	}
	if !seeded {
		index := ctlIndex["scsi"]
		d.Devices.Controllers = append(d.Devices.Controllers, libvirtxml.DomainController{Type: "scsi", Model: "virtio-scsi", Index: &index})
		disk := cdrom(s.Seed)
		if err := placeDisk(&disk, spec.BusSCSI, spec.DeviceDVD, index, 0, names); err != nil {
			return err
		}
		d.Devices.Disks = append(d.Devices.Disks, disk)
	}
	return nil
}

func bootDisk(dk driver.Disk) libvirtxml.DomainDisk {
	disk := libvirtxml.DomainDisk{
		Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: dk.Format, Discard: "unmap"},
		Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: dk.Path}},
	}
	if dk.Format == spec.DiskFormatQCOW2 {
		// An empty <backingStore/>: the chain ends here, nothing is read
		// from the image's header.
		disk.BackingStore = &libvirtxml.DomainDiskBackingStore{}
	}
	if dk.BackingPath != "" {
		base := &libvirtxml.DomainDiskBackingStore{
			Format: &libvirtxml.DomainDiskFormat{Type: dk.BackingFormat},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: dk.BackingPath}},
		}
		if dk.BackingFormat == spec.DiskFormatQCOW2 {
			base.BackingStore = &libvirtxml.DomainDiskBackingStore{}
		}
		disk.BackingStore = base
	}
	return disk
}

func cdrom(iso string) libvirtxml.DomainDisk {
	disk := libvirtxml.DomainDisk{
		Device:   "cdrom",
		Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: spec.DiskFormatRaw},
		ReadOnly: &libvirtxml.DomainDiskReadOnly{},
	}
	if iso != "" {
		disk.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: iso}}
	}
	return disk
}

// placeDisk sets the disk's target and address on its controller.
func placeDisk(disk *libvirtxml.DomainDisk, bus, kind string, ctl uint, slot int, names diskNames) error {
	u := func(v int) *uint { x := uint(v); return &x }
	switch bus {
	case spec.BusIDE:
		// hda-hdd by slot, as libvirt names IDE disks itself.
		disk.Target = &libvirtxml.DomainDiskTarget{Dev: fmt.Sprintf("hd%c", 'a'+slot), Bus: "ide"}
		disk.Address = &libvirtxml.DomainAddress{Drive: &libvirtxml.DomainAddressDrive{Controller: u(0), Bus: u(slot / 2), Target: u(0), Unit: u(slot % 2)}}
	case spec.BusSATA:
		disk.Target = &libvirtxml.DomainDiskTarget{Dev: names.next("sd"), Bus: "sata"}
		disk.Address = &libvirtxml.DomainAddress{Drive: &libvirtxml.DomainAddressDrive{Controller: &ctl, Bus: u(0), Target: u(0), Unit: u(slot)}}
	case spec.BusSCSI:
		disk.Target = &libvirtxml.DomainDiskTarget{Dev: names.next("sd"), Bus: "scsi"}
		disk.Address = &libvirtxml.DomainAddress{Drive: &libvirtxml.DomainAddressDrive{Controller: &ctl, Bus: u(0), Target: u(slot), Unit: u(0)}}
	case spec.BusVirtio:
		if kind == spec.DeviceDVD {
			return errors.New("a virtio bus holds hard disks only; put the dvd on ide, sata or scsi")
		}
		disk.Target = &libvirtxml.DomainDiskTarget{Dev: names.next("vd"), Bus: "virtio"}
	default:
		return fmt.Errorf("bus %q: not supported", bus)
	}
	return nil
}

var nicModels = map[string]string{
	spec.AdapterVirtio:  "virtio",
	spec.AdapterE1000:   "e1000",
	spec.AdapterRTL8139: "rtl8139",
	spec.AdapterPCNet:   "pcnet",
}

func addNICs(d *libvirtxml.Domain, s driver.StartSpec) error {
	for i, n := range s.Hardware.Network {
		if n.AttachmentType == spec.AttachNone {
			continue // an unplugged adapter: VirtualBox's "not attached"
		}
		model, ok := nicModels[n.AdapterType]
		if !ok {
			return fmt.Errorf("network[%d].adapter-type %q: not supported", i, n.AdapterType)
		}
		if n.MACAddress == "" {
			return fmt.Errorf("network[%d]: no MAC address assigned", i)
		}
		var be driver.NIC
		if i < len(s.NICs) {
			be = s.NICs[i]
		}
		nic := libvirtxml.DomainInterface{
			MAC:   &libvirtxml.DomainInterfaceMAC{Address: n.MACAddress},
			Model: &libvirtxml.DomainInterfaceModel{Type: model},
			// No option ROM, as driver/qemu: a guest that cannot boot
			// from disk must not fall back to PXE.
			ROM: &libvirtxml.DomainROM{Enabled: "no"},
		}
		switch n.AttachmentType {
		case spec.AttachNAT:
			nic.Source = &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}}
			nic.Alias = &libvirtxml.DomainAlias{Name: fmt.Sprintf("%s%d", natAliasPrefix, i)}
		case spec.AttachHostOnly, spec.AttachBridged, spec.AttachInternal:
			if be.Tap == "" {
				return fmt.Errorf("network[%d]: a %s adapter needs a tap and none was set up", i, n.AttachmentType)
			}
			nic.Source = &libvirtxml.DomainInterfaceSource{Ethernet: &libvirtxml.DomainInterfaceSourceEthernet{}}
			nic.Target = &libvirtxml.DomainInterfaceTarget{Dev: be.Tap}
		default:
			return fmt.Errorf("network[%d].attachment-type %q: not supported", i, n.AttachmentType)
		}
		d.Devices.Interfaces = append(d.Devices.Interfaces, nic)
	}
	return nil
}

// hostfwd is one user-mode port forward, added with HMP hostfwd_add.
type hostfwd struct {
	// Netdev is the nat NIC's -netdev id ("host" + its alias).
	Netdev string
	// Rule is hostfwd_add's rule: proto:hostaddr:hostport-:guestport.
	Rule string
	// What names the forward in an error.
	What string
}

// hostfwds lists the forwards of the spec's nat NICs: the SSH forward from
// 127.0.0.1 and each nat-rule. libvirt 9.0 cannot express them in the
// domain XML (its <portForward> needs the passt backend), so Start adds
// them through the QEMU monitor while the guest is still paused.
func hostfwds(s driver.StartSpec) []hostfwd {
	var out []hostfwd
	for i, n := range s.Hardware.Network {
		if n.AttachmentType != spec.AttachNAT {
			continue
		}
		netdev := fmt.Sprintf("host%s%d", natAliasPrefix, i)
		if i < len(s.NICs) && s.NICs[i].SSHPort > 0 {
			out = append(out, hostfwd{netdev, fmt.Sprintf("tcp:127.0.0.1:%d-:22", s.NICs[i].SSHPort), fmt.Sprintf("network[%d] SSH forward 127.0.0.1:%d", i, s.NICs[i].SSHPort)})
		}
		for _, r := range n.NATRules {
			proto, ip := r.Protocol, r.HostIP
			if proto == "" {
				proto = spec.ProtocolTCP
			}
			if ip == "" {
				ip = spec.DefaultNATHostIP
			}
			out = append(out, hostfwd{netdev, fmt.Sprintf("%s:%s:%d-:%d", proto, ip, r.HostPort, r.GuestPort), fmt.Sprintf("network[%d].nat-rules %q (%s %s:%d)", i, r.Name, proto, ip, r.HostPort)})
		}
	}
	return out
}
