package spec

import "sort"

// BuiltinHardware returns the built-in hardware models, cloud-style sizes
// shaped as VMFest's :micro: NIC 0 on the host-only network vmfestnet0 (the
// address the host reaches the machine at), NIC 1 on NAT (the way out), and
// one IDE controller with a DVD drive, booting from [IDE Controller, 0].
func BuiltinHardware() map[string]Hardware {
	size := func(mem, cpus int) Hardware {
		return Hardware{
			MemorySize: mem,
			CPUCount:   cpus,
			Network: []NIC{
				{AttachmentType: AttachHostOnly, AdapterType: AdapterVirtio, HostOnlyInterface: DefaultHostOnlyInterface},
				{AttachmentType: AttachNAT, AdapterType: AdapterVirtio},
			},
			Storage:        DefaultStorage(),
			BootMountPoint: &MountPoint{Controller: DefaultIDEName, Slot: 0},
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
