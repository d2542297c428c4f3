// Package spec holds vmfest's machine descriptions as plain data: the
// hardware spec (memory, CPUs, NICs, storage controllers, boot device) and the
// image spec (where the boot disk is and what it holds). Both read and write
// YAML and JSON with VMFest's key names, fill in defaults for what is left
// out, and validate with errors that name the field and the allowed values.
package spec

import (
	"encoding/json"
	"fmt"
)

// Attachment types of a network adapter.
const (
	AttachNAT      = "nat"
	AttachHostOnly = "host-only"
	AttachBridged  = "bridged"
	AttachInternal = "internal"
	AttachNone     = "none"
)

// Adapter types (the virtual NIC model the guest sees).
const (
	AdapterVirtio  = "virtio"
	AdapterE1000   = "e1000"
	AdapterRTL8139 = "rtl8139"
	AdapterPCNet   = "pcnet"
)

// Storage buses.
const (
	BusIDE    = "ide"
	BusSATA   = "sata"
	BusSCSI   = "scsi"
	BusVirtio = "virtio"
)

// Device types held by a storage slot.
const (
	DeviceHardDisk = "hard-disk"
	DeviceDVD      = "dvd"
)

// Firmware kinds.
const (
	FirmwareBIOS = "bios"
	FirmwareEFI  = "efi"
)

// Hardware describes a virtual machine's hardware, with VMFest's key names.
// The zero value of a field means "use the default" (see WithDefaults).
type Hardware struct {
	// MemorySize is the guest RAM in MiB.
	MemorySize int `json:"memory-size,omitempty"`
	// CPUCount is the number of virtual CPUs.
	CPUCount int `json:"cpu-count,omitempty"`
	// Network lists the network adapters, slot 0 first.
	Network []NIC `json:"network,omitempty"`
	// Storage lists the storage controllers.
	Storage []Controller `json:"storage,omitempty"`
	// BootMountPoint names the controller and slot the image disk goes in.
	BootMountPoint *MountPoint `json:"boot-mount-point,omitempty"`
	// ACPIEnabled switches ACPI (and with it the power button) on or off.
	ACPIEnabled *bool `json:"acpi-enabled,omitempty"`
	// IOAPICEnabled switches the I/O APIC on or off.
	IOAPICEnabled *bool `json:"io-apic-enabled,omitempty"`
	// Firmware is "bios" or "efi".
	Firmware string `json:"firmware,omitempty"`
	// DiskSize is the virtual size of the machine's disk: its overlay is
	// made this large (never smaller than the image; cloud-init's growpart
	// grows the root file system on first boot). 0: the image's size.
	DiskSize Size `json:"disk-size,omitempty"`
}

// NIC is one network adapter.
type NIC struct {
	// AttachmentType is what the adapter is plugged into: nat, host-only,
	// bridged, internal or none.
	AttachmentType string `json:"attachment-type"`
	// AdapterType is the NIC model: virtio, e1000, rtl8139 or pcnet.
	AdapterType string `json:"adapter-type,omitempty"`
	// MACAddress is the adapter's address; vmfest picks a stable one when
	// it is left out.
	MACAddress string `json:"mac-address,omitempty"`
	// HostOnlyInterface names the vmfest-managed host-only network (and
	// its Linux bridge) of a host-only adapter; default vmfestnet0. A name
	// that is not a network yet is created on first use.
	HostOnlyInterface string `json:"host-only-interface,omitempty"`
	// BridgedInterface names the existing host bridge a bridged adapter's
	// tap joins.
	BridgedInterface string `json:"bridged-interface,omitempty"`
	// InternalNetwork names the isolated VM-only network of an internal
	// adapter; default intnet (VirtualBox's default).
	InternalNetwork string `json:"internal-network,omitempty"`
	// NATRules are port forwards from the host into a nat adapter's guest.
	NATRules []NATRule `json:"nat-rules,omitempty"`
}

// NATRule forwards a host port to a guest port through a nat adapter.
type NATRule struct {
	// Name identifies the rule.
	Name string `json:"name"`
	// Protocol is tcp (the default) or udp.
	Protocol string `json:"protocol,omitempty"`
	// HostIP is the host address to listen on; default 127.0.0.1.
	HostIP string `json:"host-ip,omitempty"`
	// HostPort is the host port (1-65535).
	HostPort int `json:"host-port"`
	// GuestPort is the guest port (1-65535).
	GuestPort int `json:"guest-port"`
}

// NAT rule protocols.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"
)

// Defaults of the network keys.
const (
	DefaultHostOnlyInterface = "vmfestnet0"
	DefaultInternalNetwork   = "intnet"
	DefaultNATHostIP         = "127.0.0.1"
)

// Controller is one storage controller and its slots.
type Controller struct {
	// Name identifies the controller, e.g. "IDE Controller".
	Name string `json:"name"`
	// Bus is ide, sata, scsi or virtio.
	Bus string `json:"bus"`
	// Devices are the controller's slots; a nil entry is an empty slot.
	Devices []*Device `json:"devices"`
}

// Device is what a storage slot holds.
type Device struct {
	// DeviceType is hard-disk or dvd.
	DeviceType string `json:"device-type"`
	// Location is the file in the slot, as VMFest's specs named it: a
	// disk image (qcow2 or raw, attached writable, never deleted by
	// vmfest) in a hard-disk slot, an ISO (read-only) in a dvd slot. A dvd
	// slot without one is an empty drive.
	Location string `json:"location,omitempty"`
	// Volume names a vmfest volume (vmfest volume create) held by a
	// hard-disk slot, in place of a location.
	Volume string `json:"volume,omitempty"`
	// Format is a hard-disk location's format, qcow2 or raw; without it
	// the format is decided from the file's content when it is first
	// attached, and recorded.
	Format string `json:"format,omitempty"`
}

// Media says whether the device holds a file (a location or a volume).
func (d *Device) Media() bool { return d != nil && (d.Location != "" || d.Volume != "") }

// Slot is one used slot of a storage controller.
type Slot struct {
	// Index is the slot's number on its controller.
	Index int
	// Kind is hard-disk or dvd.
	Kind string
	// Boot: the slot is the boot mount point (the machine's disk).
	Boot bool
	// Device is what the spec puts in the slot; nil for the boot mount
	// point when the spec lists no device there.
	Device *Device
}

// Slots lists the used slots of controller c in h, in order: those holding
// a device, and the boot mount point (a hard disk, even past the devices
// the controller lists). Needs a boot mount point (see WithDefaults).
func (h Hardware) Slots(c Controller) []Slot {
	bp := h.BootMountPoint
	n := len(c.Devices)
	if bp != nil && c.Name == bp.Controller && bp.Slot >= n {
		n = bp.Slot + 1
	}
	var out []Slot
	for i := 0; i < n; i++ {
		var dev *Device
		if i < len(c.Devices) {
			dev = c.Devices[i]
		}
		boot := bp != nil && c.Name == bp.Controller && i == bp.Slot
		if !boot && dev == nil {
			continue
		}
		kind := DeviceHardDisk
		if dev != nil {
			kind = dev.DeviceType
		}
		out = append(out, Slot{Index: i, Kind: kind, Boot: boot, Device: dev})
	}
	return out
}

// MountPoint is a controller name and a slot, written as a two-element list
// ([IDE Controller, 0]) as VMFest did.
type MountPoint struct {
	Controller string
	Slot       int
}

// MarshalJSON writes the mount point as [controller, slot].
func (m MountPoint) MarshalJSON() ([]byte, error) {
	return json.Marshal([]any{m.Controller, m.Slot})
}

// UnmarshalJSON reads [controller, slot].
func (m *MountPoint) UnmarshalJSON(data []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil || len(raw) != 2 {
		return fmt.Errorf("boot-mount-point: want [controller-name, slot], got %s", data)
	}
	if err := json.Unmarshal(raw[0], &m.Controller); err != nil {
		return fmt.Errorf("boot-mount-point: the first element must be a controller name, got %s", raw[0])
	}
	if err := json.Unmarshal(raw[1], &m.Slot); err != nil {
		return fmt.Errorf("boot-mount-point: the second element must be a slot number, got %s", raw[1])
	}
	return nil
}

// String renders the mount point as VMFest wrote it.
func (m MountPoint) String() string { return fmt.Sprintf("[%s, %d]", m.Controller, m.Slot) }

// Bool returns a pointer to b, for the optional boolean fields.
func Bool(b bool) *bool { return &b }

// Default values for what a hardware spec leaves out.
const (
	DefaultMemorySize = 512
	DefaultCPUCount   = 1
	DefaultIDEName    = "IDE Controller"
)

// DefaultStorage is VMFest's :micro storage: one IDE controller whose
// slot 0 takes the boot disk and slot 2 holds a DVD drive.
func DefaultStorage() []Controller {
	return []Controller{{
		Name:    DefaultIDEName,
		Bus:     BusIDE,
		Devices: []*Device{nil, nil, {DeviceType: DeviceDVD}, nil},
	}}
}

// WithDefaults returns a copy of h with every unset field given its default.
// It does not validate.
func (h Hardware) WithDefaults() Hardware {
	out := h.Clone()
	if out.MemorySize == 0 {
		out.MemorySize = DefaultMemorySize
	}
	if out.CPUCount == 0 {
		out.CPUCount = DefaultCPUCount
	}
	if out.Network == nil {
		out.Network = []NIC{{AttachmentType: AttachNAT}}
	}
	for i := range out.Network {
		n := &out.Network[i]
		if n.AdapterType == "" {
			n.AdapterType = AdapterVirtio
		}
		if n.AttachmentType == AttachHostOnly && n.HostOnlyInterface == "" {
			n.HostOnlyInterface = DefaultHostOnlyInterface
		}
		if n.AttachmentType == AttachInternal && n.InternalNetwork == "" {
			n.InternalNetwork = DefaultInternalNetwork
		}
		for j := range n.NATRules {
			if n.NATRules[j].Protocol == "" {
				n.NATRules[j].Protocol = ProtocolTCP
			}
			if n.NATRules[j].HostIP == "" {
				n.NATRules[j].HostIP = DefaultNATHostIP
			}
		}
	}
	if out.Storage == nil {
		out.Storage = DefaultStorage()
	}
	if out.BootMountPoint == nil && len(out.Storage) > 0 {
		out.BootMountPoint = &MountPoint{Controller: out.Storage[0].Name, Slot: 0}
	}
	if out.ACPIEnabled == nil {
		out.ACPIEnabled = Bool(true)
	}
	if out.IOAPICEnabled == nil {
		out.IOAPICEnabled = Bool(true)
	}
	if out.Firmware == "" {
		out.Firmware = FirmwareBIOS
	}
	return out
}

// Clone returns a deep copy of h.
func (h Hardware) Clone() Hardware {
	out := h
	if h.Network != nil {
		out.Network = append([]NIC(nil), h.Network...)
		for i, n := range out.Network {
			if n.NATRules != nil {
				out.Network[i].NATRules = append([]NATRule(nil), n.NATRules...)
			}
		}
	}
	if h.Storage != nil {
		out.Storage = make([]Controller, len(h.Storage))
		for i, c := range h.Storage {
			out.Storage[i] = c
			if c.Devices != nil {
				out.Storage[i].Devices = make([]*Device, len(c.Devices))
				for j, d := range c.Devices {
					if d != nil {
						dd := *d
						out.Storage[i].Devices[j] = &dd
					}
				}
			}
		}
	}
	if h.BootMountPoint != nil {
		mp := *h.BootMountPoint
		out.BootMountPoint = &mp
	}
	if h.ACPIEnabled != nil {
		out.ACPIEnabled = Bool(*h.ACPIEnabled)
	}
	if h.IOAPICEnabled != nil {
		out.IOAPICEnabled = Bool(*h.IOAPICEnabled)
	}
	return out
}

// Merge returns base with every field that override sets laid over it, as an
// image's hardware overrides are laid over the chosen hardware. Lists
// (network, storage) are replaced whole, not merged element by element.
func Merge(base Hardware, override *Hardware) Hardware {
	out := base.Clone()
	if override == nil {
		return out
	}
	o := override.Clone()
	if o.MemorySize != 0 {
		out.MemorySize = o.MemorySize
	}
	if o.CPUCount != 0 {
		out.CPUCount = o.CPUCount
	}
	if o.Network != nil {
		out.Network = o.Network
	}
	if o.Storage != nil {
		out.Storage = o.Storage
		if o.BootMountPoint == nil {
			out.BootMountPoint = nil
		}
	}
	if o.BootMountPoint != nil {
		out.BootMountPoint = o.BootMountPoint
	}
	if o.ACPIEnabled != nil {
		out.ACPIEnabled = o.ACPIEnabled
	}
	if o.IOAPICEnabled != nil {
		out.IOAPICEnabled = o.IOAPICEnabled
	}
	if o.Firmware != "" {
		out.Firmware = o.Firmware
	}
	if o.DiskSize != 0 {
		out.DiskSize = o.DiskSize
	}
	return out
}
