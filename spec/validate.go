package spec

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"runtime"
	"slices"
	"strings"
)

// ErrInvalid is wrapped by every validation error, so callers can tell bad
// input from other failures with errors.Is.
var ErrInvalid = errors.New("invalid spec")

// FieldError is one problem with one field of a spec.
type FieldError struct {
	// Field is the key path, e.g. "network[1].adapter-type".
	Field string
	// Problem says what is wrong and what is allowed.
	Problem string
}

func (e FieldError) Error() string { return e.Field + ": " + e.Problem }

// ValidationError lists every problem found in a spec.
type ValidationError struct {
	Problems []FieldError
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.Error()
	}
	return strings.Join(parts, "; ")
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Unwrap() error { return ErrInvalid }

type problems []FieldError

func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
}

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return &ValidationError{Problems: p}
}

// Allowed values, in the order error messages list them.
var (
	// attachment types this version supports.
	supportedAttachments = []string{AttachNAT, AttachHostOnly, AttachBridged, AttachInternal, AttachNone}
	protocols            = []string{ProtocolTCP, ProtocolUDP}
	adapterTypes         = []string{AdapterVirtio, AdapterE1000, AdapterRTL8139, AdapterPCNet}
	buses                = []string{BusIDE, BusSATA, BusSCSI, BusVirtio}
	deviceTypes          = []string{DeviceHardDisk, DeviceDVD}
	firmwares            = []string{FirmwareBIOS, FirmwareEFI}
)

// SlotCount is the number of slots a controller on the given bus has.
func SlotCount(bus string) int {
	switch bus {
	case BusIDE:
		return 4 // primary and secondary channel, master and slave
	case BusSATA:
		return 6 // the ports of one AHCI controller
	case BusSCSI, BusVirtio:
		return 16
	}
	return 0
}

// MaxMemorySize is the largest memory-size accepted, in MiB (1 TiB).
const MaxMemorySize = 1 << 20

// MaxDiskSize is the largest disk-size a hardware spec may ask for.
const MaxDiskSize Size = 64 << 40

// NATPolicy is the operator's word on what NAT rules may bind on the host.
// The zero value is the default: host-ip on loopback (127.0.0.0/8) only,
// host ports from 1024 up, so a spec (from an API caller or an image's
// metadata) cannot open a port to the network or take a system service's.
type NATPolicy struct {
	// HostAddresses are further prefixes a host-ip may be in (0.0.0.0/0,
	// or 0.0.0.0/32, allows the wildcard address 0.0.0.0).
	HostAddresses []netip.Prefix
	// LowPorts allows host ports below 1024.
	LowPorts bool
}

// loopbackPrefix is where a NAT rule may always listen.
var loopbackPrefix = netip.MustParsePrefix("127.0.0.0/8")

// Allowed lists the prefixes a host-ip may be in, loopback first.
func (p NATPolicy) Allowed() []netip.Prefix {
	return append([]netip.Prefix{loopbackPrefix}, p.HostAddresses...)
}

// Validate checks a hardware spec after defaults are applied (see
// WithDefaults) against the rules of this version and the host's CPU count,
// with the default NATPolicy. The error lists every problem, each naming
// its field and what is allowed.
func (h Hardware) Validate() error {
	return h.validateWith(runtime.NumCPU(), NATPolicy{})
}

// ValidateWith is Validate with the operator's NAT policy.
func (h Hardware) ValidateWith(nat NATPolicy) error {
	return h.validateWith(runtime.NumCPU(), nat)
}

func (h Hardware) validateWith(hostCPUs int, nat NATPolicy) error {
	var p problems
	switch {
	case h.MemorySize <= 0:
		p.add("memory-size", "must be a positive number of MiB, got %d", h.MemorySize)
	case h.MemorySize > MaxMemorySize:
		p.add("memory-size", "%d MiB is more than the %d MiB allowed", h.MemorySize, MaxMemorySize)
	}
	switch {
	case h.CPUCount <= 0:
		p.add("cpu-count", "must be at least 1, got %d", h.CPUCount)
	case h.CPUCount > hostCPUs:
		p.add("cpu-count", "%d is more than the host's %d CPUs", h.CPUCount, hostCPUs)
	}
	if h.DiskSize < 0 || h.DiskSize > MaxDiskSize {
		p.add("disk-size", "%s is more than the %s allowed", h.DiskSize, MaxDiskSize)
	}
	macs := map[string]int{}
	forwards := map[string]string{}
	for i, n := range h.Network {
		f := fmt.Sprintf("network[%d]", i)
		if !slices.Contains(supportedAttachments, n.AttachmentType) {
			p.add(f+".attachment-type", "%q is not supported; allowed: %s", n.AttachmentType, strings.Join(supportedAttachments, ", "))
		}
		p.checkNetworkKeys(f, n, forwards, nat)
		if !slices.Contains(adapterTypes, n.AdapterType) {
			p.add(f+".adapter-type", "%q is not supported; allowed: %s", n.AdapterType, strings.Join(adapterTypes, ", "))
		}
		if n.MACAddress != "" {
			if err := checkMAC(n.MACAddress); err != nil {
				p.add(f+".mac-address", "%v", err)
			} else if j, dup := macs[strings.ToLower(n.MACAddress)]; dup {
				p.add(f+".mac-address", "%s is already used by network[%d]", n.MACAddress, j)
			} else {
				macs[strings.ToLower(n.MACAddress)] = i
			}
		}
	}
	names := map[string]bool{}
	ide := 0
	for i, c := range h.Storage {
		f := fmt.Sprintf("storage[%d]", i)
		if strings.TrimSpace(c.Name) == "" {
			p.add(f+".name", "must not be empty")
		} else if names[c.Name] {
			p.add(f+".name", "%q names another controller too; names must be unique", c.Name)
		}
		names[c.Name] = true
		if !slices.Contains(buses, c.Bus) {
			p.add(f+".bus", "%q is not supported; allowed: %s", c.Bus, strings.Join(buses, ", "))
			continue
		}
		if c.Bus == BusIDE {
			ide++
			if ide == 2 {
				p.add(f+".bus", "a machine has one IDE controller; use sata, scsi or virtio for more")
			}
		}
		if max := SlotCount(c.Bus); len(c.Devices) > max {
			p.add(f+".devices", "%d slots given but a %s controller has slots 0-%d", len(c.Devices), c.Bus, max-1)
		}
		for j, d := range c.Devices {
			if d == nil {
				continue
			}
			if c.Bus == BusVirtio && d.DeviceType == DeviceDVD {
				p.add(fmt.Sprintf("%s.devices[%d]", f, j), "a virtio bus holds hard disks only; put the dvd on ide, sata or scsi")
			}
			if !slices.Contains(deviceTypes, d.DeviceType) {
				p.add(fmt.Sprintf("%s.devices[%d].device-type", f, j), "%q is not supported; allowed: %s", d.DeviceType, strings.Join(deviceTypes, ", "))
			}
			p.checkDevice(fmt.Sprintf("%s.devices[%d]", f, j), d)
		}
	}
	if len(h.Storage) == 0 {
		p.add("storage", "at least one controller is needed to hold the boot disk")
	}
	if bp := h.BootMountPoint; bp == nil {
		p.add("boot-mount-point", "must name a controller and slot, e.g. [%s, 0]", DefaultIDEName)
	} else if c, ok := h.Controller(bp.Controller); !ok {
		p.add("boot-mount-point", "%q names no controller; controllers: %s", bp.Controller, strings.Join(h.controllerNames(), ", "))
	} else if max := SlotCount(c.Bus); bp.Slot < 0 || bp.Slot >= max {
		p.add("boot-mount-point", "slot %d is outside %s's slots 0-%d", bp.Slot, c.Name, max-1)
	} else if bp.Slot < len(c.Devices) && c.Devices[bp.Slot] != nil && c.Devices[bp.Slot].DeviceType != DeviceHardDisk {
		p.add("boot-mount-point", "slot %d of %s already holds a %s; the boot disk needs an empty or hard-disk slot", bp.Slot, c.Name, c.Devices[bp.Slot].DeviceType)
	}
	// The boot mount point holds the image; every other hard-disk slot
	// holds a volume or a location.
	for i, c := range h.Storage {
		for j, d := range c.Devices {
			if d == nil {
				continue
			}
			f := fmt.Sprintf("storage[%d].devices[%d]", i, j)
			boot := h.BootMountPoint != nil && h.BootMountPoint.Controller == c.Name && h.BootMountPoint.Slot == j
			switch {
			case boot && d.Media():
				p.add(f, "the boot-mount-point slot holds the machine's image; give the disk as the image's location, not the slot's")
			case !boot && d.DeviceType == DeviceHardDisk && !d.Media():
				p.add(f, "a hard-disk slot needs a disk: give a volume (vmfest volume create) or a location")
			}
		}
	}
	if h.IOAPICEnabled != nil && !*h.IOAPICEnabled && h.CPUCount > 1 {
		p.add("io-apic-enabled", "false with cpu-count %d: more than one CPU needs the I/O APIC", h.CPUCount)
	}
	if !slices.Contains(firmwares, h.Firmware) {
		p.add("firmware", "%q is not supported; allowed: %s", h.Firmware, strings.Join(firmwares, ", "))
	}
	return p.err()
}

// Controller returns the storage controller with the given name.
func (h Hardware) Controller(name string) (Controller, bool) {
	for _, c := range h.Storage {
		if c.Name == name {
			return c, true
		}
	}
	return Controller{}, false
}

func (h Hardware) controllerNames() []string {
	names := make([]string, len(h.Storage))
	for i, c := range h.Storage {
		names[i] = fmt.Sprintf("%q", c.Name)
	}
	if len(names) == 0 {
		return []string{"(none)"}
	}
	return names
}

func checkMAC(s string) error {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("%q is not a MAC address like 52:54:00:12:34:56", s)
	}
	if hw[0]&1 != 0 {
		return fmt.Errorf("%s is a multicast address; the first octet must be even", s)
	}
	return nil
}

// Validate checks an image spec: it must say where its disk is.
func (im Image) Validate() error {
	var p problems
	if strings.TrimSpace(im.Location) == "" {
		p.add("location", "must give the path of the boot disk image")
	}
	if strings.ContainsRune(im.Location, 0) {
		p.add("location", "must not contain a NUL byte")
	}
	im.validateFormat(&p)
	if im.Hardware != nil {
		// Overrides are checked once merged; here only their enumerations.
		o := im.Hardware.Clone()
		var sub problems
		for i, n := range o.Network {
			if n.AttachmentType != "" && !slices.Contains(supportedAttachments, n.AttachmentType) {
				sub.add(fmt.Sprintf("hardware.network[%d].attachment-type", i), "%q is not supported; allowed: %s", n.AttachmentType, strings.Join(supportedAttachments, ", "))
			}
		}
		if o.MemorySize < 0 {
			sub.add("hardware.memory-size", "must be a positive number of MiB, got %d", o.MemorySize)
		}
		if o.CPUCount < 0 {
			sub.add("hardware.cpu-count", "must be at least 1, got %d", o.CPUCount)
		}
		p = append(p, sub...)
	}
	return p.err()
}

// interfaceName is a Linux interface name (at most 15 bytes) that is also
// safe as one path element: vmfest names a network's bridge after it.
var interfaceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`)

// ValidInterfaceName reports whether name can name a vmfest network and its
// Linux bridge: 1-15 letters, digits, '.', '_' or '-', starting with a
// letter or digit.
func ValidInterfaceName(name string) bool { return interfaceName.MatchString(name) }

const interfaceNameRule = "use 1-15 letters, digits, '.', '_' or '-', starting with a letter or digit (it names a Linux interface)"

// checkNetworkKeys checks the keys that belong to one attachment type.
// forwards maps "protocol host-ip:host-port" to the field that claims it,
// across the machine's NICs; nat is what rules may bind.
// checkDevice checks what a storage device holds.
func (p *problems) checkDevice(f string, d *Device) {
	if d.Location != "" && d.Volume != "" {
		p.add(f, "give a volume or a location, not both")
	}
	if strings.ContainsRune(d.Location, 0) {
		p.add(f+".location", "must not contain a NUL byte")
	}
	if d.Location != "" && strings.TrimSpace(d.Location) == "" {
		p.add(f+".location", "must be the path of a file")
	}
	if d.Volume != "" {
		if d.DeviceType == DeviceDVD {
			p.add(f+".volume", "a dvd slot holds an ISO: give its location; a volume goes in a hard-disk slot")
		} else if !volumeName.MatchString(d.Volume) {
			p.add(f+".volume", "%q is not a volume name: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", d.Volume)
		}
	}
	switch {
	case d.Format == "":
	case d.DeviceType != DeviceHardDisk || d.Location == "":
		p.add(f+".format", "only a hard-disk location has a format (a volume is qcow2, an ISO raw)")
	case d.Format != DiskFormatQCOW2 && d.Format != DiskFormatRaw:
		p.add(f+".format", "%q is not supported; allowed: %s, %s", d.Format, DiskFormatQCOW2, DiskFormatRaw)
	}
}

// volumeName is a volume's name: the same rule as every vmfest name.
var volumeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func (p *problems) checkNetworkKeys(f string, n NIC, forwards map[string]string, nat NATPolicy) {
	only := func(key, value, attachment string) {
		if value != "" && n.AttachmentType != attachment {
			p.add(f+"."+key, "only applies to attachment-type %s, not %s", attachment, n.AttachmentType)
		}
	}
	only("host-only-interface", n.HostOnlyInterface, AttachHostOnly)
	only("bridged-interface", n.BridgedInterface, AttachBridged)
	only("internal-network", n.InternalNetwork, AttachInternal)
	if len(n.NATRules) > 0 && n.AttachmentType != AttachNAT {
		p.add(f+".nat-rules", "only applies to attachment-type nat, not %s", n.AttachmentType)
	}
	switch n.AttachmentType {
	case AttachHostOnly:
		if !ValidInterfaceName(n.HostOnlyInterface) {
			p.add(f+".host-only-interface", "%q: %s", n.HostOnlyInterface, interfaceNameRule)
		}
	case AttachInternal:
		if !ValidInterfaceName(n.InternalNetwork) {
			p.add(f+".internal-network", "%q: %s", n.InternalNetwork, interfaceNameRule)
		}
	case AttachBridged:
		if n.BridgedInterface == "" {
			p.add(f+".bridged-interface", "must name the host bridge to join, e.g. br0")
		} else if !ValidInterfaceName(n.BridgedInterface) {
			p.add(f+".bridged-interface", "%q: %s", n.BridgedInterface, interfaceNameRule)
		}
	}
	names := map[string]bool{}
	for j, r := range n.NATRules {
		rf := fmt.Sprintf("%s.nat-rules[%d]", f, j)
		if strings.TrimSpace(r.Name) == "" {
			p.add(rf+".name", "must not be empty")
		} else if names[r.Name] {
			p.add(rf+".name", "%q names another rule of this adapter too; names must be unique", r.Name)
		}
		names[r.Name] = true
		if !slices.Contains(protocols, r.Protocol) {
			p.add(rf+".protocol", "%q is not supported; allowed: %s", r.Protocol, strings.Join(protocols, ", "))
		}
		p.checkHostIP(rf+".host-ip", r.HostIP, nat)
		switch {
		case r.HostPort < 1 || r.HostPort > 65535:
			p.add(rf+".host-port", "%d is not a port; allowed: 1-65535", r.HostPort)
		case r.HostPort < 1024 && !nat.LowPorts:
			p.add(rf+".host-port", "%d is below 1024 (a system service's port); allowed: 1024-65535 (the operator may allow low ports)", r.HostPort)
		}
		if r.GuestPort < 1 || r.GuestPort > 65535 {
			p.add(rf+".guest-port", "%d is not a port; allowed: 1-65535", r.GuestPort)
		}
		key := fmt.Sprintf("%s %s:%d", r.Protocol, r.HostIP, r.HostPort)
		if other, dup := forwards[key]; dup {
			p.add(rf+".host-port", "%s is already forwarded by %s", key, other)
		} else {
			forwards[key] = rf
		}
	}
}

// checkHostIP checks a NAT rule's host-ip: a plain IPv4 address (QEMU's
// hostfwd takes no other form) inside the policy's prefixes.
func (p *problems) checkHostIP(field, s string, nat NATPolicy) {
	ip, err := netip.ParseAddr(s)
	switch {
	case err == nil && ip.Is4In6():
		p.add(field, "%q is an IPv4-mapped IPv6 address; write it as %s", s, ip.Unmap())
		return
	case err != nil || !ip.Is4():
		p.add(field, "%q is not an IPv4 address like 127.0.0.1", s)
		return
	}
	allowed := nat.Allowed()
	for _, pf := range allowed {
		if pf.Contains(ip) {
			return
		}
	}
	list := make([]string, len(allowed))
	for i, pf := range allowed {
		list[i] = pf.String()
	}
	p.add(field, "%s is outside the addresses NAT rules may listen on; allowed: %s (the operator may allow more)", s, strings.Join(list, ", "))
}
