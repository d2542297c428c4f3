package libvirt

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/vishvananda/netlink"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
)

// tinyDisk returns the tiny guest's base image.
func tinyDisk(t testing.TB) string {
	meta := testutil.TinyImageMeta(t)
	b, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	var img struct {
		Location string `json:"location"`
	}
	if err := json.Unmarshal(b, &img); err != nil {
		t.Fatalf("%s: %v", meta, err)
	}
	if !filepath.IsAbs(img.Location) {
		img.Location = filepath.Join(filepath.Dir(meta), img.Location)
	}
	return img.Location
}

// freePort returns a TCP port free on 127.0.0.1 now.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ownership is a file's mode, owner and group.
func ownership(t *testing.T, path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
}

// waitState polls Status until it reports want, bounded by ctx.
func waitState(ctx context.Context, t *testing.T, d *Driver, m driver.Machine, want driver.State) {
	t.Helper()
	var last driver.Status
	var err error
	for {
		last, err = d.Status(ctx, m)
		if err == nil && last.State == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("state %s (err %v), want %s", last.State, err, want)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// domainListed says whether libvirt lists the domain (virsh list --all).
func domainListed(ctx context.Context, t *testing.T, name string) bool {
	c, err := dial(ctx, endpoint{socket: DefaultSocket, name: "qemu:///system"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	doms, _, err := c.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive|golibvirt.ConnectListDomainsInactive)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range doms {
		if d.Name == name {
			return true
		}
	}
	return false
}

// TestLifecycle runs a tiny guest through libvirtd: start, agent ready,
// pause, resume, ACPI power-off, start again, power-off, kill → aborted →
// clean, forget; the base image and the user's files keep their bytes,
// modes and owners.
func TestLifecycle(t *testing.T) {
	needLibvirtd(t)
	base := tinyDisk(t)
	baseSum := testutil.MustSumFile(t, base)
	baseOwn := ownership(t, base)

	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	if err := os.Chmod(overlay, 0o600); err != nil {
		t.Fatal(err)
	}
	overlayOwn := ownership(t, overlay)
	dirOwn := ownership(t, dir)

	m := driver.Machine{Name: "lc", Dir: dir, ID: "0123456789abcdef"}
	hw := spec.BuiltinHardware()["micro"]
	hw.Network = []spec.NIC{
		{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterVirtio, MACAddress: "52:54:00:4c:56:01"},
		{AttachmentType: spec.AttachHostOnly, AdapterType: spec.AdapterE1000, MACAddress: "52:54:00:4c:56:02", HostOnlyInterface: "vmfestnet0"},
	}
	sshPort := freePort(t)
	const tap = "vmft-lc0"
	s := driver.StartSpec{
		Machine:  m,
		Hardware: hw,
		Disk:     driver.Disk{Path: overlay, Format: "qcow2", BackingPath: base, BackingFormat: "qcow2"},
		NICs:     []driver.NIC{{SSHPort: sshPort}, {Tap: tap}},
	}
	d, err := New(Options{Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := d.Forget(cctx, m); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	begin := time.Now()
	st, err := d.Start(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Since(begin)
	if st.Accel != "tcg" {
		t.Errorf("accel %q, want tcg", st.Accel)
	}
	// vmfest plugs the tap into its bridge once Start returns: it must be
	// there already, under its name.
	if _, err := netlink.LinkByName(tap); err != nil {
		t.Errorf("tap %s after Start: %v", tap, err)
	}
	if !domainListed(ctx, t, DomainName(m)) {
		t.Errorf("domain %s not listed while the machine exists", DomainName(m))
	}
	status, err := d.Status(ctx, m)
	if err != nil || status.State != driver.Running || status.PID <= 0 || status.Since.IsZero() {
		t.Fatalf("status after start: %+v, %v", status, err)
	}
	a, err := d.Agent(ctx, m)
	if err != nil {
		t.Fatalf("agent: %v\nconsole:\n%s", err, console(t, d, m))
	}
	t.Logf("define+start %v, agent ready %v after Start began", started.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
	if _, err := a.Execute(ctx, "guest-ping", nil); err != nil {
		t.Fatal(err)
	}
	if ifs, err := driver.Interfaces(ctx, a); err != nil || len(ifs) == 0 {
		t.Errorf("interfaces: %v, %v", ifs, err)
	}
	a.Close()
	// The nat NIC's SSH forward reaches the guest's sshd.
	if banner, err := sshBanner(ctx, sshPort); err != nil || !strings.HasPrefix(banner, "SSH-") {
		t.Errorf("SSH forward 127.0.0.1:%d: banner %q, %v", sshPort, banner, err)
	}

	if err := d.Pause(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitState(ctx, t, d, m, driver.Paused)
	if err := d.Resume(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitState(ctx, t, d, m, driver.Running)
	if err := d.Clean(ctx, m); err == nil {
		t.Error("Clean of a running machine succeeded")
	}

	if err := d.PowerButton(ctx, m); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	err = d.WaitExit(wctx, m)
	wcancel()
	if err != nil {
		t.Fatalf("wait after the power button: %v\nconsole:\n%s", err, console(t, d, m))
	}
	waitState(ctx, t, d, m, driver.PoweredOff)
	if out := console(t, d, m); !strings.Contains(out, "vmfest-tiny") {
		t.Errorf("console after power-off holds no guest output:\n%s", out)
	}

	// Start again, then pull the plug.
	if _, err := d.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	waitState(ctx, t, d, m, driver.Running)
	if err := d.PowerOff(ctx, m); err != nil {
		t.Fatal(err)
	}
	if status, err := d.Status(ctx, m); err != nil || status.State != driver.PoweredOff || status.PID != 0 {
		t.Fatalf("status after power-off: %+v, %v", status, err)
	}

	// Kill: aborted until Clean.
	if _, err := d.Start(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitExit(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitState(ctx, t, d, m, driver.Aborted)
	if err := d.Clean(ctx, m); err != nil {
		t.Fatal(err)
	}
	waitState(ctx, t, d, m, driver.PoweredOff)
	if err := d.Clean(ctx, m); err != nil {
		t.Errorf("second Clean: %v", err)
	}

	if err := d.Forget(ctx, m); err != nil {
		t.Fatal(err)
	}
	if domainListed(ctx, t, DomainName(m)) {
		t.Errorf("domain %s still listed after Forget", DomainName(m))
	}
	if err := d.Forget(ctx, m); err != nil {
		t.Errorf("second Forget: %v", err)
	}
	if status, err := d.Status(ctx, m); err != nil || status.State != driver.PoweredOff {
		t.Errorf("status after Forget: %+v, %v", status, err)
	}

	if got := testutil.MustSumFile(t, base); got != baseSum {
		t.Errorf("base image changed: sha256 %s, was %s", got, baseSum)
	}
	for _, f := range []struct{ path, was string }{{base, baseOwn}, {overlay, overlayOwn}, {dir, dirOwn}} {
		if got := ownership(t, f.path); got != f.was {
			t.Errorf("%s: %s, was %s (libvirt relabelled it)", f.path, got, f.was)
		}
	}
}

// sshBanner reads the first line the guest's sshd sends through the
// forward, retrying until ctx ends (sshd may start after the agent).
func sshBanner(ctx context.Context, port int) (string, error) {
	for {
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if rerr == nil {
				return strings.TrimSpace(line), nil
			}
			err = rerr
		}
		select {
		case <-ctx.Done():
			return "", errors.Join(ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func console(t *testing.T, d *Driver, m driver.Machine) string {
	b, err := d.Console(context.Background(), m)
	if err != nil {
		t.Logf("console: %v", err)
	}
	return string(b)
}

// TestRefusesForeignDomain: a domain of the machine's name that vmfest did
// not make (no vmfest metadata) is neither redefined, started nor removed.
func TestRefusesForeignDomain(t *testing.T) {
	needLibvirtd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel) // after the connection's cleanups
	dir := t.TempDir()
	m := driver.Machine{Name: "foreign", Dir: dir, ID: "fedcba9876543210"}
	c, err := dial(ctx, endpoint{socket: DefaultSocket, name: "qemu:///system"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close) // after the undefine below (cleanups run last first)
	foreign := `<domain type='qemu'><name>` + DomainName(m) + `</name><memory unit='MiB'>64</memory><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>`
	dom, err := c.DomainDefineXMLFlags(foreign, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.DomainUndefineFlags(dom, 0); err != nil {
			t.Errorf("undefine the foreign domain: %v", err)
		}
	})
	d, err := New(Options{Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	hw := spec.BuiltinHardware()["micro"]
	hw.Network = []spec.NIC{{AttachmentType: spec.AttachNone}}
	s := driver.StartSpec{Machine: m, Hardware: hw, Disk: driver.Disk{Path: filepath.Join(dir, "disk.qcow2"), Format: "qcow2"}}
	for name, op := range map[string]func() error{
		"Start":  func() error { _, err := d.Start(ctx, s); return err },
		"Status": func() error { _, err := d.Status(ctx, m); return err },
		"Forget": func() error { return d.Forget(ctx, m) },
		"Kill":   func() error { return d.Kill(ctx, m) },
	} {
		if err := op(); err == nil || !strings.Contains(err.Error(), "not made by vmfest") {
			t.Errorf("%s on a foreign domain: %v, want a refusal", name, err)
		}
	}
	if !domainListed(ctx, t, DomainName(m)) {
		t.Error("the foreign domain is gone")
	}
	x, err := c.DomainGetXMLDesc(dom, golibvirt.DomainXMLInactive)
	if err != nil || strings.Contains(x, Namespace) {
		t.Errorf("the foreign domain was redefined: %v\n%s", err, x)
	}

	// Another vmfest machine's domain under the same name (ids sharing
	// their first 8 characters) is left alone too.
	other := driver.Machine{Name: "foreign", Dir: t.TempDir(), ID: "fedcba98ffffffff"}
	def, err := domainXML(driver.StartSpec{Machine: other, Hardware: hw, Disk: s.Disk}, domainParams{Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := def.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DomainUndefineFlags(dom, 0); err != nil {
		t.Fatal(err)
	}
	if dom, err = c.DomainDefineXMLFlags(doc, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(ctx, s); err == nil || !strings.Contains(err.Error(), "belongs to another vmfest machine") {
		t.Errorf("Start over another vmfest machine's domain: %v, want a refusal", err)
	}
	if err := d.Forget(ctx, m); err == nil {
		t.Error("Forget removed another vmfest machine's domain")
	}
}

// TestUnreachable: with no libvirtd at the socket, the error says where it
// looked and what to check.
func TestUnreachable(t *testing.T) {
	d, err := New(Options{URI: "qemu:///system?socket=" + filepath.Join(t.TempDir(), "none.sock"), Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Status(context.Background(), driver.Machine{Name: "x", Dir: t.TempDir(), ID: "1"})
	if err == nil || !strings.Contains(err.Error(), "cannot reach libvirtd at") || !strings.Contains(err.Error(), "is libvirtd running?") {
		t.Errorf("error %v", err)
	}
}

// TestStartPortInUse: a nat-rule whose host port is taken fails the start
// with an error naming the rule, and leaves no domain running.
func TestStartPortInUse(t *testing.T) {
	needLibvirtd(t)
	base := tinyDisk(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	dir := t.TempDir()
	overlay := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	m := driver.Machine{Name: "clash", Dir: dir, ID: "c1a5c1a5c1a5"}
	hw := spec.BuiltinHardware()["micro"]
	hw.Network = []spec.NIC{{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterVirtio, MACAddress: "52:54:00:4c:56:21",
		NATRules: []spec.NATRule{{Name: "web", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: taken, GuestPort: 80}}}}
	s := driver.StartSpec{Machine: m, Hardware: hw, NICs: []driver.NIC{{SSHPort: freePort(t)}},
		Disk: driver.Disk{Path: overlay, Format: "qcow2", BackingPath: base, BackingFormat: "qcow2"}}
	d, err := New(Options{Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	t.Cleanup(func() {
		if err := d.Forget(ctx, m); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	_, err = d.Start(ctx, s)
	if err == nil || !strings.Contains(err.Error(), `nat-rules "web"`) {
		t.Fatalf("Start with a taken host port: %v, want an error naming the rule", err)
	}
	t.Log(err)
	if st, err := d.Status(ctx, m); err != nil || st.State != driver.PoweredOff {
		t.Errorf("after the failed start: %+v, %v; want powered-off", st, err)
	}
}
