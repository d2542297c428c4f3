// Package lifecycletest is the end-to-end lifecycle suite every driver
// passes: the tutorial of VMFest (create, start, ready, pause, resume, ACPI
// stop, start again, power-down, destroy; the base image unchanged; a
// command run through the guest agent) on any
// vmfest.Server. The root package runs it on the QEMU driver, locally and
// through the API; driver/libvirt runs it on libvirt.
package lifecycletest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

// Tutorial runs the tutorial on srv with a machine of image and hardware
// hw. inspect, when set, is called with the machine's Info while it runs,
// for checks of the driver's own (its domain listed, its process).
func Tutorial(t *testing.T, l vmfest.Server, image spec.Image, hw vmfest.Hardware, inspect func(vmfest.Info)) {
	base := testutil.MustSumFile(t, image.Location)
	ctx := ctxTimeout(t, 5*time.Minute)

	begun := time.Now()
	m, err := l.Instance(ctx, "tutorial", vmfest.ImageSpec(image), hw)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("instance in %s", time.Since(begun))
	expectState(t, m, vmfest.PoweredOff)

	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, vmfest.Running)
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := m.WaitReady(wctx); err != nil {
		log, _ := m.ConsoleLog(ctx)
		t.Fatalf("%v\nconsole:\n%s", err, log)
	}
	t.Logf("started and ready in %s", time.Since(begun))

	// The guest agent reports the NAT NIC's address from QEMU's DHCP.
	info, err := m.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Accel == "" || info.Driver == "" {
		t.Fatalf("info = %+v", info)
	}
	if inspect != nil {
		inspect(info)
	}

	// A command through the guest agent comes back as its own.
	res, err := m.Exec(ctx, vmfest.ExecRequest{Command: []string{"sh", "-c", "echo hi; exit 3"}})
	if err != nil || res.ExitCode != 3 || string(res.Stdout) != "hi\n" {
		t.Fatalf("exec: %+v, %v", res, err)
	}

	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, vmfest.Paused)
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, vmfest.Running)
	if err := m.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}

	// Stop presses the ACPI button; the guest powers itself off.
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := m.Stop(sctx); err != nil {
		log, _ := m.ConsoleLog(ctx)
		t.Fatalf("%v\nconsole:\n%s", err, log)
	}
	expectState(t, m, vmfest.PoweredOff)
	log, err := m.ConsoleLog(ctx)
	if err != nil || len(log) == 0 {
		t.Fatalf("console log: %d bytes, %v", len(log), err)
	}

	// Start again: the overlay keeps the machine's disk.
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	expectState(t, m, vmfest.PoweredOff)

	disk := info.Disk
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(disk); !os.IsNotExist(err) {
		t.Fatalf("overlay survived destroy: %v", err)
	}
	if testutil.MustSumFile(t, image.Location) != base {
		t.Fatal("the base image changed")
	}
}

func expectState(t *testing.T, m vmfest.Machine, want vmfest.State) {
	t.Helper()
	got, err := m.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("%s: state = %s, want %s", m.Name(), got, want)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
