package driver

import "context"

// HotPlugger changes what a running machine's storage slots hold.
// Called with the machine's lock held.
type HotPlugger interface {
	// PlugDrive puts d into the running machine: a disk into an empty
	// slot of a virtio controller (a new virtio-blk device, which the
	// guest sees as a hot-plugged PCI disk), an ISO into an empty dvd
	// drive (its medium changed). ctlIndex is the controller's index in
	// the machine's hardware storage list, which names the devices as a
	// start names them; bus is its bus and kind the slot's device type
	// (spec.DeviceHardDisk or spec.DeviceDVD). On error nothing is left
	// plugged.
	PlugDrive(ctx context.Context, m Machine, ctlIndex int, bus, kind string, d Drive) error
	// UnplugDrive takes what PlugDrive (or a start) put in the slot out of
	// the running machine again: a virtio disk is unplugged once the guest
	// lets it go (bounded by ctx), a dvd drive's medium is removed.
	UnplugDrive(ctx context.Context, m Machine, ctlIndex int, bus, kind string, d Drive) error
}
