package vmfest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
)

// The networking tests run as root inside the network and PID namespaces
// TestMain puts the package's tests in (netnstest.Wrap): the bridges,
// taps, dnsmasq, QEMU and every packet to a guest address stay there.

// downNetworks takes down the runtime (bridge, dnsmasq) of every network
// of l, whatever state its machines were left in: the tests of this package
// share one network namespace.
func downNetworks(l *Local) {
	nm, err := l.networks()
	if err != nil {
		return
	}
	nets, _ := nm.List()
	for _, n := range nets {
		nm.Down(context.Background(), n)
	}
}

// waitLinksGone waits, up to 10 s, until no interface for which gone
// returns true is left, and fails the test naming those that stay: the
// kernel removes a tap shortly after (not when) its QEMU exits.
func waitLinksGone(t *testing.T, what string, gone func(name string) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []string
		for _, name := range links(t) {
			if gone(name) {
				left = append(left, name)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("interfaces %v left 10s after %s", left, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: host-only and internal networks create bridges and taps")
	}
}

// sshOut runs cmd on m and returns its standard output, failing the test
// unless it exits 0.
func sshOut(t *testing.T, ctx context.Context, l *Local, m Machine, cmd string) string {
	t.Helper()
	signer, _, err := l.SSHKey()
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code, err := SSH(ctx, m, signer, SSHOptions{Command: []string{cmd}, Stdout: &out, Stderr: &errOut})
	if err != nil || code != 0 {
		t.Fatalf("%s: ssh %q: exit %d, %v\nstdout: %s\nstderr: %s", m.Name(), cmd, code, err, out.String(), errOut.String())
	}
	return out.String()
}

// links lists the names of this namespace's network interfaces.
func links(t *testing.T) []string {
	t.Helper()
	ls, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		out = append(out, l.Attrs().Name)
	}
	return out
}

// TestNetworking boots three machines at once and checks every attachment
// type end to end: m1 is micro (host-only + NAT); m2 has host-only, NAT
// with a nat-rule, and the internal network lab; m3 has NAT and lab.
func TestNetworking(t *testing.T) {
	image := tinyImage(t)
	needRoot(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 6*time.Minute)
	webPort, err := freeLoopbackPort()
	if err != nil {
		t.Fatal(err)
	}
	m2hw := spec.Hardware{MemorySize: 256, Network: []spec.NIC{
		{AttachmentType: spec.AttachHostOnly},
		{AttachmentType: spec.AttachNAT, NATRules: []spec.NATRule{{Name: "web", HostPort: webPort, GuestPort: 8080}}},
		{AttachmentType: spec.AttachInternal, InternalNetwork: "lab"},
	}}
	m3hw := spec.Hardware{MemorySize: 256, Network: []spec.NIC{
		{AttachmentType: spec.AttachNAT},
		{AttachmentType: spec.AttachInternal, InternalNetwork: "lab"},
	}}
	hws := map[string]Hardware{"m1": HardwareModel("micro"), "m2": HardwareSpec(m2hw), "m3": HardwareSpec(m3hw)}
	ms := map[string]Machine{}
	for _, name := range []string{"m1", "m2", "m3"} {
		m, err := l.Instance(ctx, name, ImageSpec(image), hws[name])
		if err != nil {
			t.Fatal(err)
		}
		ms[name] = m
	}
	begun := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(ms))
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := m.Start(ctx)
			if err == nil {
				err = m.WaitReady(ctx)
			}
			if err != nil {
				log, _ := m.ConsoleLog(ctx)
				errs <- fmt.Errorf("%s: %w\nconsole:\n%s", m.Name(), err, log)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("three machines ready in %s", time.Since(begun).Round(100*time.Millisecond))

	// Host-only: the reserved address, confirmed by the dnsmasq lease.
	info1, err := ms["m1"].Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reserved := info1.Networks[0].IP
	if !strings.HasPrefix(reserved, "192.168.56.") {
		t.Fatalf("m1's reserved address = %q, want one on 192.168.56.0/24", reserved)
	}
	addr1 := leaseIP(ctx, t, ms["m1"], 0)
	if addr1.IP != reserved {
		t.Fatalf("m1 IP = %+v, want %s", addr1, reserved)
	}
	t.Logf("m1's host-only address %s known %s after the starts", addr1.IP, time.Since(begun).Round(100*time.Millisecond))

	// vmfest ssh: the cloud-init seed gave the guest its name and our key.
	if got := sshOut(t, ctx, l, ms["m1"], "hostname"); got != "m1\n" {
		t.Fatalf("hostname = %q, want m1", got)
	}
	signer, _, _ := l.SSHKey()
	code, err := SSH(ctx, ms["m1"], signer, SSHOptions{Command: []string{"sh", "-c", "exit 3"}})
	if err != nil || code != 3 {
		t.Fatalf("exit status = %d, %v; want 3", code, err)
	}
	// A login the guest refuses fails at once, not after the wait.
	refusedAt := time.Now()
	if _, err := SSH(ctx, ms["m1"], signer, SSHOptions{Command: []string{"true"}, User: "stranger", ConnectTimeout: time.Minute}); err == nil || !strings.Contains(err.Error(), "the guest refused the login") {
		t.Fatalf("ssh as a user the guest does not have: %v", err)
	} else if d := time.Since(refusedAt); d > 30*time.Second {
		t.Errorf("a refused login took %s to fail", d)
	}
	// The host reaches the guest at its host-only address directly too.
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(addr1.IP, "22"), 10*time.Second)
	if err != nil {
		t.Fatalf("host to m1 over host-only: %v", err)
	}
	conn.Close()

	// Two machines on one host-only network reach each other.
	addr2, err := ms["m2"].IP(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if addr2.IP == addr1.IP {
		t.Fatalf("m1 and m2 share %s", addr1.IP)
	}
	sshOut(t, ctx, l, ms["m1"], "ping -c 1 -W 10 "+addr2.IP)

	// A nat-rule forwards 127.0.0.1:webPort to a listener in m2.
	sshOut(t, ctx, l, ms["m2"], "mkdir -p /tmp/www && echo hello-from-m2 >/tmp/www/index.html && httpd -p 8080 -h /tmp/www")
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", webPort))
	if err != nil {
		t.Fatalf("nat-rule forward: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.TrimSpace(string(body)) != "hello-from-m2" {
		t.Fatalf("nat-rule forward answered %q", body)
	}

	// A NAT-only NIC's address is its SSH forward on 127.0.0.1.
	addr3, err := ms["m3"].IP(ctx, 0)
	if err != nil || addr3.IP != "127.0.0.1" || addr3.Port == 0 || addr3.Source != SourceNATForward {
		t.Fatalf("m3 IP(0) = %+v, %v", addr3, err)
	}

	// Internal: the peers reach each other; the host has no address there.
	info2, _ := ms["m2"].Info(ctx)
	info3, _ := ms["m3"].Info(ctx)
	setIP := func(m Machine, mac, cidr string) {
		sshOut(t, ctx, l, m, fmt.Sprintf(`for i in /sys/class/net/eth*; do [ "$(cat $i/address)" = %s ] && ip addr add %s dev ${i##*/}; done; ip -o addr | grep -q %s`, mac, cidr, strings.Split(cidr, "/")[0]))
	}
	setIP(ms["m2"], info2.Networks[2].MAC, "10.99.0.2/24")
	setIP(ms["m3"], info3.Networks[1].MAC, "10.99.0.3/24")
	sshOut(t, ctx, l, ms["m3"], "ping -c 1 -W 10 10.99.0.2")
	if a, err := ms["m3"].IP(ctx, 1); err != nil || a.IP != "10.99.0.3" || a.Source != SourceAgent {
		t.Fatalf("m3 IP(1) = %+v, %v; want 10.99.0.3 from the agent", a, err)
	}
	lab, err := netlink.LinkByName("lab")
	if err != nil {
		t.Fatalf("internal network's bridge: %v", err)
	}
	if addrs, _ := netlink.AddrList(lab, netlink.FAMILY_V4); len(addrs) != 0 {
		t.Fatalf("the internal bridge has host addresses %v", addrs)
	}
	if c, err := net.DialTimeout("tcp", "10.99.0.2:22", 3*time.Second); err == nil {
		c.Close()
		t.Fatal("the host reached a machine on an internal network")
	}

	// list/show data: reserved address and SSH forward.
	if info1.Networks[1].SSH == "" || info1.Networks[0].Tap == "" {
		t.Fatalf("m1 networks = %+v", info1.Networks)
	}
	var taps []string
	for _, m := range ms {
		info, _ := m.Info(ctx)
		for _, n := range info.Networks {
			if n.Tap != "" {
				taps = append(taps, n.Tap)
			}
		}
	}
	if len(taps) != 4 { // m1's host-only, m2's host-only and internal, m3's internal
		t.Fatalf("taps = %v, want 4", taps)
	}

	// Power-down and destroy leave no tap, bridge, dnsmasq, lease or
	// allocation behind.
	for _, m := range ms {
		if err := m.PowerDown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	nm, _ := l.networks()
	for _, name := range []string{"vmfestnet0", "lab"} {
		n, err := nm.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		if nm.DnsmasqRunning(n) != 0 {
			t.Errorf("dnsmasq of %s still runs", name)
		}
	}
	if _, err := os.Stat(filepath.Join(nm.Path("vmfestnet0"), network.LeasesFile)); !os.IsNotExist(err) {
		t.Errorf("leases survived power-down: %v", err)
	}
	waitLinksGone(t, "power-down", func(name string) bool { return name != "lo" })
	if err := l.RemoveNetwork(ctx, "lab"); !errors.Is(err, ErrWrongState) {
		t.Errorf("remove a network in use: %v", err)
	}
	for _, m := range ms {
		if err := m.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"vmfestnet0", "lab"} {
		if a, err := nm.Allocations(name); err != nil || len(a) != 0 {
			t.Errorf("%s allocations after destroy: %v, %v", name, a, err)
		}
	}
	if err := l.RemoveNetwork(ctx, "lab"); err != nil {
		t.Errorf("remove an unused network: %v", err)
	}
}

// TestIPTimeoutNamesSources: a machine whose guest never boots (a blank
// disk) gets a bounded wait, and the error names each source and what it
// said. Then QEMU is killed: its tap goes with it, and the machine starts
// again.
func TestIPTimeoutNamesSources(t *testing.T) {
	needRoot(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, time.Minute)
	m, err := l.Instance(ctx, "deaf", ImageSpec(blankImage(t, l.Home())), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.PowerDown(context.Background()) })
	wctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	defer cancel()
	a, err := m.IP(wctx, 0)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("IP = %+v, %v; want ErrTimeout", a, err)
	}
	for _, want := range []string{"network[0] (host-only on vmfestnet0)", "lease: no lease for", "(reserved 192.168.56.2)", "agent: did not answer", "neighbour: no entry for"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	// The NAT NIC answers at once; slot 2 does not exist.
	if a, err := m.IP(ctx, 1); err != nil || a.Source != SourceNATForward {
		t.Errorf("IP(1) = %+v, %v", a, err)
	}
	if _, err := m.IP(ctx, 2); !errors.Is(err, ErrInvalid) {
		t.Errorf("IP(2) = %v, want ErrInvalid", err)
	}

	// A crash takes QEMU's tap with it; the start after it works.
	info, _ := m.Info(ctx)
	tap := info.Networks[0].Tap
	if _, err := netlink.LinkByName(tap); err != nil {
		t.Fatalf("tap %q while running: %v", tap, err)
	}
	crashQEMU(ctx, t, l, m)
	waitLinksGone(t, "QEMU was killed", func(name string) bool { return name == tap })
	if err := m.Start(ctx); err != nil {
		t.Fatalf("start after a crash: %v", err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	waitLinksGone(t, "power-down", func(name string) bool { return strings.HasPrefix(name, "vmt") || name == "vmfestnet0" })
}

// TestStartRightAfterCrash: a start at once after QEMU was killed does not
// trip on the machine's old tap, which the kernel is still removing (the
// start waits for it), several times in a row; the taps are marked as
// vmfest's. Run it with -count=3 on a loaded machine.
func TestStartRightAfterCrash(t *testing.T) {
	needRoot(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, 2*time.Minute)
	img := blankImage(t, l.Home())
	hw := HardwareSpec(spec.Hardware{MemorySize: 64, Network: []spec.NIC{
		{AttachmentType: spec.AttachHostOnly, HostOnlyInterface: "crash0"},
		{AttachmentType: spec.AttachInternal, InternalNetwork: "crashlab"},
	}})
	m, err := l.Instance(ctx, "crashy", ImageSpec(img), hw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.PowerDown(context.Background()) })
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		info, err := m.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range info.Networks {
			tap, err := netlink.LinkByName(n.Tap)
			if err != nil {
				t.Fatalf("round %d: tap %q: %v", i, n.Tap, err)
			}
			if !strings.HasPrefix(tap.Attrs().Alias, network.MarkPrefix) || !strings.HasSuffix(tap.Attrs().Alias, ":tap") {
				t.Fatalf("round %d: tap %s has alias %q, not vmfest's mark", i, n.Tap, tap.Attrs().Alias)
			}
		}
		crashQEMU(ctx, t, l, m)
		_, lingers := netlink.LinkByName(info.Networks[0].Tap)
		begun := time.Now()
		if err := m.Start(ctx); err != nil {
			t.Fatalf("round %d: start right after a crash: %v", i, err)
		}
		t.Logf("round %d: old tap still there when QEMU was gone: %v; started %s after the kill", i, lingers == nil, time.Since(begun).Round(time.Millisecond))
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	waitLinksGone(t, "power-down", func(name string) bool {
		return strings.HasPrefix(name, "vmt") || name == "crash0" || name == "crashlab"
	})
}

// TestHostLinkNames (issue 10, finding 2): a machine or a network named
// like a host link (a bridge with or without an address, a veth) is
// refused at create, and creating, destroying and removing around it
// leave the link as it was; a network defined before the host link
// appeared is refused at start and its removal leaves the link.
func TestHostLinkNames(t *testing.T) {
	needRoot(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, time.Minute)
	img := blankImage(t, l.Home())
	if _, err := l.CreateNetwork(ctx, NetworkSpec{Name: "docker0", Kind: network.KindInternal}); err != nil {
		t.Fatal(err) // no such link yet
	}
	late, err := l.Instance(ctx, "late", ImageSpec(img), HardwareSpec(spec.Hardware{MemorySize: 64, Network: []spec.NIC{{AttachmentType: spec.AttachInternal, InternalNetwork: "docker0"}}}))
	if err != nil {
		t.Fatal(err)
	}
	type made struct {
		link netlink.Link
		addr string
	}
	host := []made{
		{&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}, "10.50.0.1/24"},
		{&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "virbr0"}}, ""},
		{&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "docker0"}}, ""},
		{&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "veth1"}, "10.51.0.1/24"},
	}
	before := map[string]int{}
	for _, h := range host {
		name := h.link.Attrs().Name
		if err := netlink.LinkAdd(h.link); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { netlink.LinkDel(h.link) })
		link, _ := netlink.LinkByName(name)
		if h.addr != "" {
			a, _ := netlink.ParseAddr(h.addr)
			netlink.AddrAdd(link, a)
		}
		before[name] = link.Attrs().Index
	}
	for _, name := range []string{"br0", "virbr0", "veth0"} {
		for _, nic := range []spec.NIC{
			{AttachmentType: spec.AttachInternal, InternalNetwork: name},
			{AttachmentType: spec.AttachHostOnly, HostOnlyInterface: name},
		} {
			t.Run(name+"/"+nic.AttachmentType, func(t *testing.T) {
				want := "link " + name + " exists and was not made by vmfest: choose another name"
				m, err := l.Instance(ctx, "m-"+name, ImageSpec(img), HardwareSpec(spec.Hardware{MemorySize: 64, Network: []spec.NIC{nic}}))
				if err == nil {
					m.Destroy(ctx)
				}
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
					t.Fatalf("create a machine on %s: %v, want %q", name, err, want)
				}
				if _, err := l.CreateNetwork(ctx, NetworkSpec{Name: name, Kind: nic.AttachmentType}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
					t.Fatalf("create network %s: %v", name, err)
				}
			})
		}
	}
	if err := late.Start(ctx); err == nil || !strings.Contains(err.Error(), "link docker0 exists and was not made by vmfest") {
		t.Fatalf("start on a network whose name the host took: %v", err)
	}
	if err := late.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveNetwork(ctx, "docker0"); err != nil {
		t.Fatal(err)
	}
	for name, index := range before {
		link, err := netlink.LinkByName(name)
		if err != nil || link.Attrs().Index != index {
			t.Errorf("host link %s: %v (index %v, was %d)", name, err, link, index)
		}
	}
}

// TestNetworksAPI: networks are created on first use, listed with their
// machines, refused removal while used, and never overlap.
func TestNetworksAPI(t *testing.T) {
	l := newTestServer(t)
	ctx := context.Background()
	img := blankImage(t, l.Home())
	if _, err := l.Instance(ctx, "a", ImageSpec(img), HardwareModel("micro")); err != nil {
		t.Fatal(err)
	}
	b, err := l.Instance(ctx, "b", ImageSpec(img), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	nets, err := l.Networks(ctx)
	if err != nil || len(nets) != 1 || nets[0].Name != "vmfestnet0" || nets[0].Subnet == "" || strings.Join(nets[0].Machines, ",") != "a,b" {
		t.Fatalf("networks = %+v, %v", nets, err)
	}
	other, err := l.CreateNetwork(ctx, NetworkSpec{Name: "vmfestnet1"})
	if err != nil || other.Subnet == nets[0].Subnet || other.HostIP == "" {
		t.Fatalf("second network = %+v, %v", other, err)
	}
	if _, err := l.CreateNetwork(ctx, NetworkSpec{Name: "vmfestnet1"}); !errors.Is(err, ErrExists) {
		t.Errorf("create twice: %v", err)
	}
	if _, err := l.CreateNetwork(ctx, NetworkSpec{Name: "x", Subnet: "10.0.0.1/8"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad subnet: %v", err)
	}
	if err := l.RemoveNetwork(ctx, "vmfestnet0"); !errors.Is(err, ErrWrongState) || !strings.Contains(err.Error(), "a, b") && !strings.Contains(err.Error(), "[a b]") {
		t.Errorf("remove while in use: %v", err)
	}
	if err := l.RemoveNetwork(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("remove unknown: %v", err)
	}
	ib, _ := b.Info(ctx)
	if err := b.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	// b's address is free again: the next machine gets it.
	c, err := l.Instance(ctx, "c", ImageSpec(img), HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	ic, _ := c.Info(ctx)
	if ic.Networks[0].IP != ib.Networks[0].IP {
		t.Errorf("c got %s, want b's freed %s", ic.Networks[0].IP, ib.Networks[0].IP)
	}
	if err := l.RemoveNetwork(ctx, "vmfestnet1"); err != nil {
		t.Fatal(err)
	}
}

// TestBridged plugs a machine into an existing bridge (made here, in the
// test's namespace) and unplugs it at power-down; vmfest never touches the
// bridge itself. A missing bridge is a clear error at start.
func TestBridged(t *testing.T) {
	needRoot(t)
	l := newTestServer(t)
	ctx := ctxTimeout(t, time.Minute)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "brtest"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(br) })
	if a, err := netlink.ParseAddr("10.52.0.1/24"); err != nil || netlink.AddrAdd(br, a) != nil || netlink.LinkSetAlias(br, "the user's") != nil {
		t.Fatal("give the test bridge an address and alias")
	}
	before, err := netlink.LinkByName("brtest")
	if err != nil {
		t.Fatal(err)
	}
	img := blankImage(t, l.Home())
	hw := func(bridge string) Hardware {
		return HardwareSpec(spec.Hardware{MemorySize: 64, Network: []spec.NIC{{AttachmentType: spec.AttachBridged, BridgedInterface: bridge}}})
	}
	bad, err := l.Instance(ctx, "nobridge", ImageSpec(img), hw("nosuch0"))
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Start(ctx); err == nil || !strings.Contains(err.Error(), "bridged-interface nosuch0: no such interface") {
		t.Fatalf("start on a missing bridge: %v", err)
	}
	expectState(t, bad, PoweredOff)

	m, err := l.Instance(ctx, "br", ImageSpec(img), hw("brtest"))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	info, _ := m.Info(ctx)
	tap, err := netlink.LinkByName(info.Networks[0].Tap)
	if err != nil {
		t.Fatalf("tap %q: %v", info.Networks[0].Tap, err)
	}
	brl, _ := netlink.LinkByName("brtest")
	if !strings.HasSuffix(tap.Attrs().Alias, ":tap") {
		t.Fatalf("tap %s alias %q: not marked", tap.Attrs().Name, tap.Attrs().Alias)
	}
	if tap.Attrs().MasterIndex != brl.Attrs().Index || tap.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("tap %s: master %d (bridge is %d), flags %v", tap.Attrs().Name, tap.Attrs().MasterIndex, brl.Attrs().Index, tap.Attrs().Flags)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := m.IP(wctx, 0); !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "agent:") || !strings.Contains(err.Error(), "neighbour: no entry") || strings.Contains(err.Error(), "lease:") {
		t.Fatalf("IP of a silent bridged NIC: %v", err)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	waitLinksGone(t, "power-down", func(name string) bool { return name == info.Networks[0].Tap })
	after, err := netlink.LinkByName("brtest")
	if err != nil {
		t.Fatalf("vmfest removed the user's bridge: %v", err)
	}
	if a, b := after.Attrs(), before.Attrs(); a.Index != b.Index || a.Alias != b.Alias || a.MTU != b.MTU || a.Flags&net.FlagUp != b.Flags&net.FlagUp {
		t.Fatalf("vmfest changed the user's bridge: %+v, was %+v", a, b)
	}
	if addrs, _ := netlink.AddrList(after, netlink.FAMILY_V4); len(addrs) != 1 || addrs[0].IPNet.String() != "10.52.0.1/24" {
		t.Fatalf("the user's bridge's addresses: %v", addrs)
	}
}

// TestHostOnlyChurn creates, starts, powers down and destroys many
// host-only machines (VMFEST_CHURN, default 12), four at a time, and checks
// that no tap, lease, allocation or dnsmasq is left.
func TestHostOnlyChurn(t *testing.T) {
	needRoot(t)
	n := 12
	if s := os.Getenv("VMFEST_CHURN"); s != "" {
		fmt.Sscan(s, &n)
	}
	l := newTestServer(t)
	ctx := ctxTimeout(t, 10*time.Minute)
	img := blankImage(t, l.Home())
	hw := HardwareSpec(spec.Hardware{MemorySize: 64, Network: []spec.NIC{{AttachmentType: spec.AttachHostOnly, HostOnlyInterface: "churn0"}}})
	begun := time.Now()
	sem := make(chan struct{}, 4)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			name := fmt.Sprintf("c%d", i)
			m, err := l.Instance(ctx, name, ImageSpec(img), hw)
			if err == nil {
				err = m.Start(ctx)
			}
			if err == nil {
				err = m.PowerDown(ctx)
			}
			if err == nil {
				err = m.Destroy(ctx)
			}
			if err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d host-only machines created, started, powered down and destroyed in %s", n, time.Since(begun).Round(100*time.Millisecond))
	nm, _ := l.networks()
	net0, err := nm.Get("churn0")
	if err != nil {
		t.Fatal(err)
	}
	if a, err := nm.Allocations("churn0"); err != nil || len(a) != 0 {
		t.Errorf("allocations left: %v, %v", a, err)
	}
	if nm.DnsmasqRunning(net0) != 0 {
		t.Error("dnsmasq left running")
	}
	if _, err := os.Stat(filepath.Join(nm.Path("churn0"), network.LeasesFile)); !os.IsNotExist(err) {
		t.Errorf("leases left: %v", err)
	}
	waitLinksGone(t, "the churn", func(name string) bool { return strings.HasPrefix(name, "vmt") || name == "churn0" })
}

// freeLoopbackPort returns a TCP port free on 127.0.0.1 now.
func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
