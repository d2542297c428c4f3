package spec

import "sort"

// DefaultVirtioName names the controller of the built-in models' boot disk.
const DefaultVirtioName = "VirtIO Controller"

// BuiltinHardware returns the built-in hardware models, cloud-style sizes
// shaped as VMFest's :micro: NIC 0 on the host-only network vmfestnet0 (the
// address the host reaches the machine at), NIC 1 on NAT (the way out), the
// boot disk on a virtio controller, booting from [VirtIO Controller, 0], and
// VMFest's IDE controller with a DVD drive in slot 2.
//
// VMFest's :micro booted from [IDE Controller, 0]. The firmware (SeaBIOS)
// reads an IDE disk by PIO, a port access per 16-bit word, which under TCG
// took 2.5 s of the tiny guest's 5.5 s boot; it reads the same 19 MB from a
// virtio disk in 0.3 s (docs/images.md). Every cloud kernel has virtio_blk,
// a user's own storage spec is used as written, and the IDE controller
// stays for DVDs and the cloud-init seed.
func BuiltinHardware() map[string]Hardware {
	size := func(mem, cpus int) Hardware {
		return Hardware{
			MemorySize: mem,
			CPUCount:   cpus,
			Network: []NIC{
				{AttachmentType: AttachHostOnly, AdapterType: AdapterVirtio, HostOnlyInterface: DefaultHostOnlyInterface},
				{AttachmentType: AttachNAT, AdapterType: AdapterVirtio},
			},
			Storage:        append([]Controller{{Name: DefaultVirtioName, Bus: BusVirtio}}, DefaultStorage()...),
			BootMountPoint: &MountPoint{Controller: DefaultVirtioName, Slot: 0},
		}.WithDefaults()
	}
	return map[string]Hardware{
		"micro":  size(512, 1),
		"small":  size(1024, 1),
		"medium": size(2048, 2),
		"large":  size(4096, 4),
		"xlarge": size(8192, 8),
	}
}

// BuiltinHardwareNames lists the built-in model names, smallest first.
func BuiltinHardwareNames() []string {
	m := BuiltinHardware()
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return m[names[i]].MemorySize < m[names[j]].MemorySize })
	return names
}
