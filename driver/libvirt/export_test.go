package libvirt

import (
	"testing"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/qemu"
)

// NeedLibvirtd is needLibvirtd for the external tests (package libvirt_test).
func NeedLibvirtd(t *testing.T) { needLibvirtd(t) }

// NamedDriver is a driver a benchmark runs side by side with another.
type NamedDriver struct {
	Name string
	D    driver.Driver
}

// SideBySide is the libvirt driver and the QEMU driver, both under TCG,
// for benchmarks that measure one beside the other in the same run.
func SideBySide(tb testing.TB) []NamedDriver {
	tb.Helper()
	lv, err := New(Options{Accel: "tcg"})
	if err != nil {
		tb.Fatal(err)
	}
	qd, err := qemu.New(qemu.Options{Accel: "tcg"})
	if err != nil {
		tb.Fatal(err)
	}
	return []NamedDriver{{"libvirt", lv}, {"qemu", qd}}
}
