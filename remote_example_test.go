package vmfest_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/vmfest/vmfest"
)

// A program drives a remote host by changing one line: Connect instead of
// NewLocal. (Compiled, not run: it needs a `vmfest serve`.)
func ExampleConnect() {
	ctx := context.Background()
	// srv, err := vmfest.NewLocal(vmfest.ConfigFromEnv())
	srv, err := vmfest.Connect("https://vmhost.example:18083", vmfest.WithToken(os.Getenv("VMFEST_TOKEN")))
	if err != nil {
		log.Fatal(err)
	}
	m, err := srv.Instance(ctx, "vm1", vmfest.ImageModel("debian-12"), vmfest.HardwareModel("small"))
	if err != nil {
		log.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		log.Fatal(err)
	}
	info, err := m.Info(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.Name, info.State)
}
