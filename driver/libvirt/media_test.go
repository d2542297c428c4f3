package libvirt_test

import (
	"io"
	"log/slog"
	"testing"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/driver/libvirt"
	"github.com/vmfest/vmfest/internal/lifecycletest"
	"github.com/vmfest/vmfest/spec"
)

// TestMedia boots the tiny guest through libvirtd with a volume and an ISO
// attached at create, in the domain's disks, and checks the guest reads
// and writes the one and mounts the other (lifecycletest.Media, as the
// root package does on the QEMU driver).
func TestMedia(t *testing.T) {
	libvirt.NeedLibvirtd(t)
	image := tinyImage(t)
	d, err := libvirt.New(libvirt.Options{Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := vmfest.NewLocal(vmfest.Config{Home: t.TempDir(), Driver: d, Accel: "tcg", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h := spec.BuiltinHardware()["micro"]
	h.Network = []spec.NIC{{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterVirtio}}
	lifecycletest.Media(t, l, image, vmfest.HardwareSpec(h))
}
