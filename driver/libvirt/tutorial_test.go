package libvirt_test

import (
	"io"
	"log/slog"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/driver/libvirt"
	"github.com/vmfest/vmfest/internal/lifecycletest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

// TestTutorial is the lifecycle suite every driver passes, on a Local
// server whose machines the libvirt driver runs (micro hardware: a
// host-only NIC on a tap vmfest plugs into its bridge, and a nat NIC),
// inside the test's own network namespace and libvirtd. While the machine
// runs, libvirt lists its domain and reports its QEMU's pid.
func TestTutorial(t *testing.T) {
	libvirt.NeedLibvirtd(t)
	image := tinyImage(t)
	d, err := libvirt.New(libvirt.Options{Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	l, err := vmfest.NewLocal(vmfest.Config{Home: home, Driver: d, Accel: "tcg", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	listed := false
	lifecycletest.Tutorial(t, l, image, vmfest.HardwareModel("micro"), func(info vmfest.Info) {
		if info.Driver != "libvirt" || info.PID == 0 {
			t.Errorf("info = %+v", info)
		}
		listed = virshListed(t) != ""
	})
	if !listed {
		t.Error("virsh list --all did not show the machine's domain while it ran")
	}
	if name := virshListed(t); name != "" {
		// driver.Lifecycle.Forget undefines it; the root package's Destroy
		// must call it.
		t.Errorf("virsh list --all still shows %s after destroy: Destroy did not call the driver's Forget", name)
		exec.Command("virsh", "-c", "qemu:///system", "undefine", name).Run()
	}
}

// virshListed returns the tutorial machine's domain (vmfest-tutorial-<id>)
// when `virsh list --all` shows it, else "".
func virshListed(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("virsh", "-c", "qemu:///system", "list", "--all", "--name").CombinedOutput()
	if err != nil {
		t.Fatalf("virsh list --all: %v\n%s", err, out)
	}
	for _, name := range strings.Fields(string(out)) {
		if strings.HasPrefix(name, "vmfest-tutorial-") {
			return name
		}
	}
	return ""
}

// tinyImage is the tiny guest's image spec.
func tinyImage(t *testing.T) spec.Image {
	t.Helper()
	return testutil.TinyImage(t)
}
