package vmfest_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/spec"
)

// The VMFest tutorial in Go: a machine from an immutable image and the micro
// hardware model. (This example uses a blank disk so it runs anywhere QEMU
// is installed; use a real image such as build/vmfest-tiny.qcow2 and call
// m.Start and m.WaitReady to boot it.)
func Example() {
	ctx := context.Background()
	home, _ := os.MkdirTemp("", "vmfest-example")
	defer os.RemoveAll(home)

	// An immutable image: machines get copy-on-write overlays of it.
	disk := filepath.Join(home, "base.raw")
	os.WriteFile(disk, make([]byte, 1<<20), 0o444)

	srv, err := vmfest.NewLocal(vmfest.Config{Home: home})
	if err != nil {
		log.Fatal(err)
	}
	m, err := srv.Instance(ctx, "my-vm",
		vmfest.ImageSpec(spec.Image{Location: disk, Immutable: true, OSFamily: "linux"}),
		vmfest.HardwareModel("micro"))
	if err != nil {
		log.Fatal(err)
	}
	info, _ := m.Info(ctx)
	fmt.Println(info.Name, info.State, info.Hardware, info.HardwareSpec.MemorySize, "MiB")

	// Start, Pause, Resume, Stop and PowerDown drive the machine; Destroy
	// removes it and its overlay, never the immutable base image.
	if err := m.Destroy(ctx); err != nil {
		log.Fatal(err)
	}
	_, err = srv.FindMachine(ctx, "my-vm")
	fmt.Println(err)
	// Output:
	// my-vm powered-off micro 512 MiB
	// not found: machine "my-vm"
}

// Hardware can be given as data instead of a model name; what is left out
// gets defaults, and bad values are refused with the field named.
func ExampleHardwareSpec() {
	h, err := spec.ParseHardware([]byte(`
memory-size: 256
cpu-count: 1
network: [{attachment-type: nat, adapter-type: e1000}]
`))
	if err != nil {
		log.Fatal(err)
	}
	h = h.WithDefaults()
	fmt.Println(h.MemorySize, h.Network[0].AdapterType, h.BootMountPoint)

	h.Network[0].AttachmentType = "wifi"
	fmt.Println(h.Validate())
	// Output:
	// 256 e1000 [IDE Controller, 0]
	// network[0].attachment-type: "wifi" is not supported; allowed: nat, host-only, bridged, internal, none
}
