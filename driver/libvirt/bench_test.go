package libvirt

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
)

// BenchmarkStartToReady starts the tiny guest (micro hardware, one nat
// NIC) through libvirtd and, side by side as the baseline, through the
// QEMU driver, on the same kind of overlay of the same base: Start until
// the guest agent answers, then PowerOff and Clean (not timed). It reports
// start-s (Start alone: define and launch) and ready-s (Start until the
// agent answers), the mean per iteration.
//
//	go test -run '^$' -bench StartToReady -benchtime 5x ./driver/libvirt/
func BenchmarkStartToReady(b *testing.B) {
	if libvirtdSkip != "" {
		b.Skip(libvirtdSkip)
	}
	if os.Getenv(stageEnv) != "tests" {
		b.Skip("runs only inside the test's namespaces")
	}
	for _, bc := range SideBySide(b) {
		b.Run(bc.Name, func(b *testing.B) {
			s := benchSpec(b)
			ctx := context.Background()
			b.Cleanup(func() { bc.D.PowerOff(ctx, s.Machine); bc.D.Forget(ctx, s.Machine) })
			var started, ready time.Duration
			b.ResetTimer()
			for b.Loop() {
				t0 := time.Now()
				if _, err := bc.D.Start(ctx, s); err != nil {
					b.Fatal(err)
				}
				started += time.Since(t0)
				actx, cancel := context.WithTimeout(ctx, 60*time.Second)
				a, err := bc.D.Agent(actx, s.Machine)
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				ready += time.Since(t0)
				a.Close()
				b.StopTimer()
				if err := bc.D.PowerOff(ctx, s.Machine); err != nil {
					b.Fatal(err)
				}
				if err := bc.D.Clean(ctx, s.Machine); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(started.Seconds()/float64(b.N), "start-s")
			b.ReportMetric(ready.Seconds()/float64(b.N), "ready-s")
		})
	}
}

// benchSpec is a machine on a fresh overlay of the tiny guest with one nat
// NIC.
func benchSpec(b *testing.B) driver.StartSpec {
	base := tinyDisk(b)
	dir := b.TempDir()
	overlay := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay).CombinedOutput(); err != nil {
		b.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	hw := spec.BuiltinHardware()["micro"]
	hw.Network = []spec.NIC{{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterVirtio, MACAddress: "52:54:00:4c:56:11"}}
	return driver.StartSpec{
		Machine:  driver.Machine{Name: "bench", Dir: dir, ID: "b0b0b0b0b0b0"},
		Hardware: hw,
		Disk:     driver.Disk{Path: overlay, Format: "qcow2", BackingPath: base, BackingFormat: "qcow2"},
		NICs:     []driver.NIC{{SSHPort: freePort(b)}},
	}
}
