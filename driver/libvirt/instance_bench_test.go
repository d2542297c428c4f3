package libvirt_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/driver/libvirt"
	"github.com/vmfest/vmfest/internal/testutil"
)

// BenchmarkInstance creates machines on a Local server whose driver is
// libvirt, beside one whose driver is QEMU, in the same run: creating a
// machine does not involve its driver (the overlay, the record and the
// address allocation are vmfest's), so the two should match.
func BenchmarkInstance(b *testing.B) {
	for _, bc := range libvirt.SideBySide(b) {
		b.Run(bc.Name, func(b *testing.B) {
			home := b.TempDir()
			l, err := vmfest.NewLocal(vmfest.Config{Home: home, Driver: bc.D, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				b.Fatal(err)
			}
			img := testutil.BlankImage(b, b.TempDir(), "blank.raw")
			ctx := context.Background()
			i := 0
			for b.Loop() {
				if _, err := l.Instance(ctx, fmt.Sprintf("m%d", i), vmfest.ImageSpec(img), vmfest.HardwareModel("micro")); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
