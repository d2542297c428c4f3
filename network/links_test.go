package network

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vmfest/vmfest/internal/netnstest"
)

// linkState is what a test checks stays the same on a link vmfest must
// not touch.
type linkState struct {
	Index, Master, MTU int
	Up                 bool
	Alias, MAC         string
	Addrs              []string
}

func stateOf(t *testing.T, name string) linkState {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	a := l.Attrs()
	st := linkState{Index: a.Index, Master: a.MasterIndex, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, Alias: a.Alias, MAC: a.HardwareAddr.String()}
	addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
	for _, ad := range addrs {
		st.Addrs = append(st.Addrs, ad.IPNet.String())
	}
	return st
}

func mustAdd(t *testing.T, l netlink.Link, addr string) {
	t.Helper()
	if err := netlink.LinkAdd(l); err != nil {
		t.Fatalf("add %s: %v", l.Attrs().Name, err)
	}
	link, err := netlink.LinkByName(l.Attrs().Name)
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" {
		a, _ := netlink.ParseAddr(addr)
		if err := netlink.AddrAdd(link, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
}

// hostLinks makes, in the test's namespace, links named like a host's.
func hostLinks(t *testing.T) map[string]linkState {
	t.Helper()
	mustAdd(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}, "10.50.0.1/24")
	mustAdd(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "virbr0"}}, "")
	mustAdd(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "docker0"}}, "")
	mustAdd(t, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "veth1"}, "10.51.0.1/24")
	out := map[string]linkState{}
	for _, n := range []string{"br0", "virbr0", "docker0", "veth0"} {
		out[n] = stateOf(t, n)
	}
	return out
}

// TestHostLinksUntouched (issue 10, finding 2): a network named like a
// host link is refused at create; one defined before the host link
// appeared is refused at Up and its Down and Remove leave the link as it
// was, whatever its type, with or without an address.
func TestHostLinksUntouched(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := newManager(t)
	// Defined while no link of the name existed (an older vmfest, or the
	// host made the link later).
	for _, name := range []string{"br0", "virbr0"} {
		kind := KindInternal
		if name == "br0" {
			kind = KindHostOnly
		}
		if _, err := m.Create(ctx, Spec{Name: name, Kind: kind, Subnet: map[bool]string{true: "10.60.0.0/24"}[kind == KindHostOnly]}); err != nil {
			t.Fatal(err)
		}
	}
	before := hostLinks(t)
	for _, name := range []string{"br0", "virbr0", "docker0", "veth0"} {
		for _, kind := range []string{KindHostOnly, KindInternal} {
			t.Run(name+"/"+kind, func(t *testing.T) {
				want := "link " + name + " exists and was not made by vmfest"
				if _, err := m.Create(ctx, Spec{Name: name + "x", Kind: kind}); err != nil {
					t.Fatalf("a free name: %v", err)
				} else if err := m.Remove(ctx, name+"x"); err != nil {
					t.Fatal(err)
				}
				if name == "br0" || name == "virbr0" {
					return // defined above
				}
				if _, err := m.Create(ctx, Spec{Name: name, Kind: kind}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
					t.Errorf("Create: %v, want %q", err, want)
				}
				if _, err := m.Ensure(ctx, name, kind); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
					t.Errorf("Ensure: %v, want %q", err, want)
				}
			})
		}
	}
	for _, name := range []string{"br0", "virbr0"} {
		n, err := m.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		lk, err := m.Lock(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Up(ctx, n, func(Allocation) bool { return true }); err == nil || !strings.Contains(err.Error(), "exists and was not made by vmfest") {
			t.Errorf("Up of %s: %v", name, err)
		}
		if err := m.Down(ctx, n); err != nil {
			t.Errorf("Down of %s: %v", name, err)
		}
		if m.DnsmasqRunning(n) != 0 {
			t.Errorf("a dnsmasq runs on the host's %s", name)
		}
		lk.Unlock()
		if err := m.Remove(ctx, name); err != nil {
			t.Errorf("Remove of %s: %v", name, err)
		}
	}
	for name, st := range before {
		if got := stateOf(t, name); !equalState(got, st) {
			t.Errorf("%s changed: %+v, was %+v", name, got, st)
		}
	}
}

func equalState(a, b linkState) bool {
	return a.Index == b.Index && a.Master == b.Master && a.MTU == b.MTU && a.Up == b.Up && a.Alias == b.Alias && a.MAC == b.MAC && slices.Equal(a.Addrs, b.Addrs)
}

// TestOwnBridgeChanged: a bridge vmfest made is marked; another state
// directory cannot take it; Down leaves it in place, with an error, while
// somebody's interface or address is on it, and not at all once somebody
// re-marked it.
func TestOwnBridgeChanged(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := newManager(t)
	alive := func(Allocation) bool { return true }
	n, err := m.Create(ctx, Spec{Name: "lab", Kind: KindInternal})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Up(ctx, n, alive); err != nil {
		t.Fatal(err)
	}
	id, _ := m.stateID(false)
	if st := stateOf(t, "lab"); st.Alias != "vmfest:"+id+":lab" {
		t.Fatalf("bridge alias = %q, want vmfest:%s:lab", st.Alias, id)
	}
	other := newManager(t)
	if _, err := other.Create(ctx, Spec{Name: "lab", Kind: KindInternal}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "made by another vmfest state directory") {
		t.Fatalf("another state directory's Create: %v", err)
	}
	// Somebody puts a veth of theirs on it.
	mustAdd(t, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "veth1"}, "")
	veth, _ := netlink.LinkByName("veth0")
	br, _ := netlink.LinkByName("lab")
	if err := netlink.LinkSetMaster(veth, br); err != nil {
		t.Fatal(err)
	}
	if err := m.Down(ctx, n); err == nil || !strings.Contains(err.Error(), "bridge lab was changed since vmfest made it (veth0)") {
		t.Fatalf("Down with a foreign port: %v", err)
	}
	if !LinkExists("lab") {
		t.Fatal("the bridge went with somebody's port on it")
	}
	netlink.LinkSetNoMaster(veth)
	a, _ := netlink.ParseAddr("10.70.0.1/24")
	netlink.AddrAdd(br, a)
	if err := m.Down(ctx, n); err == nil || !strings.Contains(err.Error(), "address 10.70.0.1/24") {
		t.Fatalf("Down with a foreign address: %v", err)
	}
	netlink.AddrDel(br, a)
	netlink.LinkSetAlias(br, "theirs now")
	if err := m.Down(ctx, n); err != nil || !LinkExists("lab") {
		t.Fatalf("Down of a re-marked bridge: %v (exists %v)", err, LinkExists("lab"))
	}
	if err := m.Up(ctx, n, alive); err == nil || !strings.Contains(err.Error(), "was not made by vmfest") {
		t.Fatalf("Up onto a re-marked bridge: %v", err)
	}
	netlink.LinkSetAlias(br, "vmfest:"+id+":lab")
	if err := m.Down(ctx, n); err != nil || LinkExists("lab") {
		t.Fatalf("Down of an unchanged own bridge: %v (exists %v)", err, LinkExists("lab"))
	}
}

// TestTaps: before QEMU makes a tap, PrepareTap waits for the tap of a
// crashed run to go (deleting it when it lingers), and refuses a link that
// is not vmfest's; PlugTap marks the tap and plugs it only into the
// network's own bridge; PlugTapBridged leaves the host's bridge as it was.
func TestTaps(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := newManager(t)
	id, err := m.stateID(true)
	if err != nil {
		t.Fatal(err)
	}
	mkTap := func(name, alias string) netlink.Link {
		t.Helper()
		if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP}); err != nil {
			t.Fatal(err)
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if alias != "" {
			netlink.LinkSetAlias(l, alias)
		}
		return l
	}
	if err := m.PrepareTap(ctx, "vmtnone-0"); err != nil {
		t.Fatalf("no tap: %v", err)
	}
	// The tap of a crashed run, which the kernel removes a little later.
	old := mkTap("vmtold-0", "vmfest:"+id+":tap")
	go func() { time.Sleep(300 * time.Millisecond); netlink.LinkDel(old) }()
	begun := time.Now()
	if err := m.PrepareTap(ctx, "vmtold-0"); err != nil || LinkExists("vmtold-0") {
		t.Fatalf("a vanishing tap: %v", err)
	}
	if d := time.Since(begun); d < 250*time.Millisecond {
		t.Fatalf("PrepareTap returned after %s, before the tap went", d)
	}
	// Ours and lingering (persistent here): deleted.
	mkTap("vmtstay-0", "vmfest:"+id+":tap")
	if err := m.PrepareTap(ctx, "vmtstay-0"); err != nil || LinkExists("vmtstay-0") {
		t.Fatalf("a lingering own tap: %v (exists %v)", err, LinkExists("vmtstay-0"))
	}
	// Not ours: refused, and left.
	mustAdd(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "vmtbr-0"}}, "")
	mkTap("vmtfor-0", "")
	mkTap("vmtoth-0", "vmfest:someoneelse:tap")
	for _, tt := range []struct {
		name string
		wait time.Duration
	}{{"vmtbr-0", 0}, {"vmtfor-0", time.Second}, {"vmtoth-0", time.Second}} {
		wctx, cancel := context.WithTimeout(ctx, tt.wait+time.Second)
		err := m.PrepareTap(wctx, tt.name)
		cancel()
		if !errors.Is(err, ErrForeignLink) || !LinkExists(tt.name) {
			t.Errorf("PrepareTap(%s) = %v (exists %v), want ErrForeignLink and the link left", tt.name, err, LinkExists(tt.name))
		}
	}

	// Plugging into the network's own bridge.
	n, err := m.Create(ctx, Spec{Name: "lab", Kind: KindInternal})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Up(ctx, n, func(Allocation) bool { return true }); err != nil {
		t.Fatal(err)
	}
	mkTap("vmtnew-0", "")
	if err := m.PlugTap("vmtnew-0", n); err != nil {
		t.Fatal(err)
	}
	tap, br := stateOf(t, "vmtnew-0"), stateOf(t, "lab")
	if tap.Alias != "vmfest:"+id+":tap" || tap.Master != br.Index || !tap.Up {
		t.Fatalf("plugged tap = %+v (bridge index %d)", tap, br.Index)
	}
	if err := m.PlugTap("vmtoth-0", n); !errors.Is(err, ErrForeignLink) {
		t.Errorf("PlugTap of another's tap: %v", err)
	}
	// A network whose bridge name is now somebody else's bridge.
	fake := Network{Name: "docker0", Kind: KindInternal, Bridge: "docker0"}
	mustAdd(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "docker0"}}, "")
	mkTap("vmtdk-0", "")
	if err := m.PlugTap("vmtdk-0", fake); err == nil || !strings.Contains(err.Error(), "was not made by vmfest") {
		t.Errorf("PlugTap into a host bridge as a network: %v", err)
	}
	// Taking the network down with our tap still in it is fine.
	if err := m.Down(ctx, n); err != nil || LinkExists("lab") {
		t.Fatalf("Down with an own tap plugged: %v", err)
	}

	// Bridged: the host bridge keeps its address, state, MTU and alias.
	mustAdd(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}, "10.50.0.1/24")
	brl, _ := netlink.LinkByName("br0")
	netlink.LinkSetAlias(brl, "the host's")
	netlink.LinkSetMTU(brl, 1400)
	// Its own port, as eth0 is br0's on a host.
	mustAdd(t, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1400}, PeerName: "eth0p"}, "")
	eth0, _ := netlink.LinkByName("eth0")
	if err := netlink.LinkSetMaster(eth0, brl); err != nil {
		t.Fatal(err)
	}
	before := stateOf(t, "br0")
	low := mkTap("vmtbrd-0", "")
	// A MAC lower than any the bridge has would become the bridge's.
	netlink.LinkSetHardwareAddr(low, net.HardwareAddr{0x02, 0, 0, 0, 0, 1})
	if err := m.PlugTapBridged("vmtbrd-0", "br0"); err != nil {
		t.Fatal(err)
	}
	if tap := stateOf(t, "vmtbrd-0"); tap.Master != before.Index || tap.Alias != "vmfest:"+id+":tap" {
		t.Fatalf("bridged tap = %+v", tap)
	}
	if got := stateOf(t, "br0"); !equalState(got, before) {
		t.Fatalf("host bridge changed: %+v, was %+v", got, before)
	}
	netlink.LinkDel(low)
	if got := stateOf(t, "br0"); !equalState(got, before) {
		t.Fatalf("host bridge changed when the tap went: %+v, was %+v", got, before)
	}
	// A network named like the host bridge cannot be made, so no Down can
	// reach it.
	if _, err := m.Create(ctx, Spec{Name: "br0", Kind: KindInternal}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Create br0: %v", err)
	}
}

// TestSubnetOverlapsHost (issue 10, finding 7): a host-only subnet that
// overlaps an address or a route of the namespace is refused, naming it;
// the default route does not count; the automatic subnet skips them.
func TestSubnetOverlapsHost(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := newManager(t)
	mustAdd(t, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}, "10.20.30.5/24")
	peer, _ := netlink.LinkByName("eth0p")
	netlink.LinkSetUp(peer)
	eth0, _ := netlink.LinkByName("eth0")
	route := func(r netlink.Route) {
		t.Helper()
		if err := netlink.RouteAdd(&r); err != nil {
			t.Fatalf("route %+v: %v", r, err)
		}
	}
	_, dst, _ := net.ParseCIDR("172.20.0.0/16")
	route(netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Gw: net.ParseIP("10.20.30.1")})
	_, dst, _ = net.ParseCIDR("10.99.0.0/16")
	route(netlink.Route{Dst: dst, Type: 6 /* RTN_BLACKHOLE */, Table: 100})
	route(netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("10.20.30.1")}) // default
	a, _ := netlink.ParseAddr("192.168.56.9/24")
	netlink.AddrAdd(eth0, a)
	_, dst, _ = net.ParseCIDR("192.168.57.0/24")
	route(netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Gw: net.ParseIP("10.20.30.1")})

	tests := []struct{ subnet, want string }{
		{"10.20.30.0/24", "overlaps the address 10.20.30.5/24 of eth0"},
		{"10.20.0.0/16", "overlaps the address 10.20.30.5/24 of eth0"},
		{"10.20.30.128/25", "overlaps the address 10.20.30.5/24 of eth0"},
		{"172.20.5.0/24", "overlaps the route to 172.20.0.0/16 on eth0"},
		{"10.99.3.0/24", "overlaps the blackhole route to 10.99.0.0/16"},
		{"127.0.0.0/8", "overlaps the address 127.0.0.1/8 of lo"},
		{"10.21.0.0/24", ""},
	}
	for _, tt := range tests {
		t.Run(tt.subnet, func(t *testing.T) {
			name := "n" + strings.NewReplacer(".", "", "/", "").Replace(tt.subnet)
			_, err := m.Create(ctx, Spec{Name: name, Subnet: tt.subnet})
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	auto, err := m.Create(ctx, Spec{Name: "auto"})
	if err != nil || auto.Subnet != "192.168.58.0/24" {
		t.Fatalf("automatic subnet = %q, %v; want 192.168.58.0/24 (56 is an address, 57 a route)", auto.Subnet, err)
	}
	// Its own bridge does not stand in the way of the next Up; the host
	// taking the subnet meanwhile does.
	alive := func(Allocation) bool { return true }
	lk, _ := m.Lock(ctx, "auto")
	defer lk.Unlock()
	t.Cleanup(func() { m.Down(context.Background(), auto) })
	for range 2 {
		if err := m.Up(ctx, auto, alive); err != nil {
			t.Fatal(err)
		}
	}
	m.Down(ctx, auto)
	_, dst, _ = net.ParseCIDR("192.168.58.0/25")
	route(netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: dst, Gw: net.ParseIP("10.20.30.1")})
	if err := m.Up(ctx, auto, alive); err == nil || !strings.Contains(err.Error(), "route to 192.168.58.0/25 on eth0") {
		t.Fatalf("Up after the host took the subnet: %v", err)
	}
	if LinkExists("auto") {
		t.Fatal("Up made the bridge of a subnet the host uses")
	}
}
