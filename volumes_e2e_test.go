package vmfest_test

import (
	"testing"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/internal/lifecycletest"
	"github.com/vmfest/vmfest/spec"
)

// TestVolumeAndISOInGuest boots the tiny guest on the QEMU driver with a
// volume and an ISO attached at create, and checks the guest reads and
// writes the one and mounts the other (lifecycletest.Media; driver/libvirt
// runs the same on libvirt).
func TestVolumeAndISOInGuest(t *testing.T) {
	image := vmfest.TinyImage(t)
	h := spec.BuiltinHardware()["micro"]
	h.Network = []spec.NIC{{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterVirtio}} // no host network needed
	lifecycletest.Media(t, vmfest.NewTestServer(t), image, vmfest.HardwareSpec(h))
}
