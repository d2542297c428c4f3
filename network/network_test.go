package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/netnstest"
)

func newManager(t *testing.T) *Manager {
	t.Helper()
	m, err := NewManager(filepath.Join(t.TempDir(), "networks"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCreate(t *testing.T) {
	m := newManager(t)
	ctx := context.Background()
	n, err := m.Ensure(ctx, "vmfestnet0", KindHostOnly)
	if err != nil {
		t.Fatal(err)
	}
	if n.Subnet == "" || n.Bridge != "vmfestnet0" {
		t.Fatalf("network = %+v", n)
	}
	p := netip.MustParsePrefix(n.Subnet)
	if n.HostIP != p.Addr().Next().String() {
		t.Errorf("host ip %s is not .1 of %s", n.HostIP, n.Subnet)
	}
	again, err := m.Ensure(ctx, "vmfestnet0", KindHostOnly)
	if err != nil || again.Subnet != n.Subnet {
		t.Fatalf("second Ensure = %+v, %v", again, err)
	}
	second, err := m.Ensure(ctx, "vmfestnet1", KindHostOnly)
	if err != nil {
		t.Fatal(err)
	}
	if netip.MustParsePrefix(second.Subnet).Overlaps(p) {
		t.Errorf("second network %s overlaps the first %s", second.Subnet, n.Subnet)
	}
	if _, err := m.Ensure(ctx, "vmfestnet0", KindInternal); !errors.Is(err, ErrInvalid) {
		t.Errorf("Ensure of another kind: %v", err)
	}
	if _, err := m.Create(ctx, Spec{Name: "vmfestnet0"}); !errors.Is(err, ErrExists) {
		t.Errorf("Create of an existing name: %v", err)
	}
	tests := []struct {
		spec Spec
		want string
	}{
		{Spec{Name: "bad/name"}, "network name"},
		{Spec{Name: "much-too-long-name"}, "network name"},
		{Spec{Name: "x", Kind: "wifi"}, "allowed: host-only, internal"},
		{Spec{Name: "x", Subnet: "10.0.0.0"}, "CIDR"},
		{Spec{Name: "x", Subnet: "10.0.0.0/31"}, "8 to 30"},
		{Spec{Name: "x", Subnet: "10.0.0.5/24"}, "give the network address, 10.0.0.0/24"},
		{Spec{Name: "x", Subnet: n.Subnet}, "overlaps"},
		{Spec{Name: "x", Kind: KindInternal, Subnet: "10.9.0.0/24"}, "no subnet"},
	}
	for _, tt := range tests {
		t.Run(tt.spec.Name+" "+tt.want, func(t *testing.T) {
			_, err := m.Create(ctx, tt.spec)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	in, err := m.Create(ctx, Spec{Name: "lab", Kind: KindInternal})
	if err != nil || in.Subnet != "" || in.HostIP != "" {
		t.Fatalf("internal = %+v, %v", in, err)
	}
	list, err := m.List()
	if err != nil || len(list) != 3 || list[0].Name != "lab" {
		t.Fatalf("list = %+v, %v", list, err)
	}
}

func TestNextFreeSubnet(t *testing.T) {
	pp := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	tests := []struct {
		taken, host []netip.Prefix
		want        string
	}{
		{nil, nil, "192.168.56.0/24"},
		{pp("192.168.56.0/24"), nil, "192.168.57.0/24"},
		{pp("192.168.56.0/24"), pp("192.168.57.0/24"), "192.168.58.0/24"},
		{nil, pp("192.168.0.0/16"), ""},
	}
	for _, tt := range tests {
		got, err := nextFreeSubnet(tt.taken, tt.host)
		if tt.want == "" {
			if !errors.Is(err, ErrFull) {
				t.Errorf("%v %v: err = %v, want ErrFull", tt.taken, tt.host, err)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("%v %v: got %s, %v; want %s", tt.taken, tt.host, got, err, tt.want)
		}
	}
}

// TestAllocateConcurrently: many allocations at once, from separate
// managers as separate processes would be and from goroutines sharing one
// (whose calls are committed in batches), never share an address.
func TestAllocateConcurrently(t *testing.T) {
	m := newManager(t)
	ctx := context.Background()
	if _, err := m.Create(ctx, Spec{Name: "net", Subnet: "10.77.0.0/26"}); err != nil {
		t.Fatal(err)
	}
	const n = 40
	var wg sync.WaitGroup
	got := make([]Allocation, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			other := m
			if i%2 == 0 {
				other = &Manager{dir: m.dir}
			}
			got[i], errs[i] = other.Allocate(ctx, "net", Allocation{Owner: fmt.Sprintf("id%d", i), Machine: fmt.Sprintf("m%d", i), MAC: fmt.Sprintf("52:54:00:00:00:%02x", i)})
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i, a := range got {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if j, dup := seen[a.IP]; dup {
			t.Fatalf("%s given to m%d and m%d", a.IP, i, j)
		}
		seen[a.IP] = i
		ip := netip.MustParseAddr(a.IP)
		if !netip.MustParsePrefix("10.77.0.2/26").Masked().Contains(ip) || a.IP == "10.77.0.0" || a.IP == "10.77.0.1" {
			t.Fatalf("%s is not a guest address of 10.77.0.0/26", a.IP)
		}
	}
	allocs, err := m.Allocations("net")
	if err != nil || len(allocs) != n {
		t.Fatalf("persisted %d allocations, %v", len(allocs), err)
	}
	// The network is down, so its dnsmasq.conf is written when it comes up
	// (Up), from the allocations.
	nw, err := m.Get("net")
	if err != nil {
		t.Fatal(err)
	}
	conf, err := DnsmasqConfig(nw, m.Path("net"), allocs)
	if err != nil || strings.Count(string(conf), "dhcp-host=") != n || !strings.Contains(string(conf), "dhcp-host=52:54:00:00:00:00,10.77.0.") {
		t.Fatalf("dnsmasq.conf:\n%s (%v)", conf, err)
	}
}

// TestAllocateBatched: calls on one Manager that wait for the network's
// lock together are committed together, each as if made alone: distinct
// addresses, ErrFull for the one that finds the subnet full, and a call
// whose context ends while it waits (the batch's leader among them) gets
// nothing allocated, while the others go on without it.
func TestAllocateBatched(t *testing.T) {
	m := newManager(t)
	ctx := context.Background()
	if _, err := m.Create(ctx, Spec{Name: "net", Subnet: "10.79.0.0/28"}); err != nil { // .2 to .14
		t.Fatal(err)
	}
	held, err := m.Lock(ctx, "net")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	const n = 16
	type result struct {
		a   Allocation
		err error
	}
	results := make([]chan result, n)
	cancels := make([]context.CancelFunc, n)
	for i := range n {
		results[i] = make(chan result, 1)
		cctx, cancel := context.WithCancel(ctx)
		cancels[i] = cancel
		defer cancel()
		go func() {
			a, err := m.Allocate(cctx, "net", Allocation{Owner: fmt.Sprintf("id%02d", i), Machine: fmt.Sprintf("m%02d", i), MAC: fmt.Sprintf("52:54:00:00:02:%02x", i)})
			results[i] <- result{a, err}
		}()
	}
	// All n join one batch while its leader waits for the lock.
	var owners []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.mu.Lock()
		if b := m.open["net"]; b != nil && len(b.reqs) == n {
			for _, r := range b.reqs {
				owners = append(owners, r.Owner)
			}
		}
		m.mu.Unlock()
		if owners != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls did not join one batch within 10 s", n)
		}
		time.Sleep(time.Millisecond)
	}
	var leader, follower int
	fmt.Sscanf(owners[0], "id%d", &leader)
	fmt.Sscanf(owners[n-1], "id%d", &follower)
	got := make([]result, n)
	for _, i := range []int{follower, leader} {
		cancels[i]()
		select {
		case got[i] = <-results[i]:
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d did not return within 10 s of its context's end", i)
		}
		if !errors.Is(got[i].err, context.Canceled) {
			t.Fatalf("call %d, cancelled while waiting: %+v, %v", i, got[i].a, got[i].err)
		}
	}
	held.Unlock()
	seen := map[string]bool{}
	full := 0
	for i := range n {
		if i == leader || i == follower {
			continue
		}
		select {
		case got[i] = <-results[i]:
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d did not return within 10 s of the lock's release", i)
		}
		switch r := got[i]; {
		case errors.Is(r.err, ErrFull):
			full++
		case r.err != nil:
			t.Fatalf("call %d: %v", i, r.err)
		case seen[r.a.IP]:
			t.Fatalf("%s given twice", r.a.IP)
		default:
			seen[r.a.IP] = true
		}
	}
	if len(seen) != 13 || full != 1 {
		t.Fatalf("%d addresses given and %d calls found the subnet full; want 13 and 1", len(seen), full)
	}
	allocs, err := m.Allocations("net")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range allocs {
		var i int
		fmt.Sscanf(a.Owner, "id%d", &i)
		if r := got[i]; r.err != nil || r.a != a {
			t.Errorf("persisted %+v; its call returned %+v, %v", a, r.a, r.err)
		}
	}
	if len(allocs) != 13 {
		t.Errorf("persisted %d allocations, want 13", len(allocs))
	}
}

func TestAllocateReleaseReuse(t *testing.T) {
	m := newManager(t)
	ctx := context.Background()
	if _, err := m.Create(ctx, Spec{Name: "small", Subnet: "10.78.0.0/29"}); err != nil { // .2 to .6
		t.Fatal(err)
	}
	alloc := func(owner string, slot int) (Allocation, error) {
		return m.Allocate(ctx, "small", Allocation{Owner: owner, Machine: owner, Slot: slot, MAC: "52:54:00:00:01:0" + owner[len(owner)-1:]})
	}
	var ips []string
	for i := range 5 {
		a, err := alloc(fmt.Sprintf("m%d", i), 0)
		if err != nil {
			t.Fatal(err)
		}
		ips = append(ips, a.IP)
	}
	if strings.Join(ips, " ") != "10.78.0.2 10.78.0.3 10.78.0.4 10.78.0.5 10.78.0.6" {
		t.Fatalf("ips = %v", ips)
	}
	if _, err := alloc("m9", 0); !errors.Is(err, ErrFull) {
		t.Fatalf("allocation past the end: %v", err)
	}
	// A retried allocation of the same owner and slot gets the same address.
	if a, err := alloc("m1", 0); err != nil || a.IP != "10.78.0.3" {
		t.Fatalf("retry = %+v, %v", a, err)
	}
	touched, err := m.Release(ctx, "m1")
	if err != nil || len(touched) != 1 || touched[0] != "small" {
		t.Fatalf("release = %v, %v", touched, err)
	}
	if _, err := m.Release(ctx, "m1"); err != nil {
		t.Fatalf("second release: %v", err)
	}
	a, err := alloc("m7", 0)
	if err != nil || a.IP != "10.78.0.3" {
		t.Fatalf("after release got %+v, %v; want the freed 10.78.0.3", a, err)
	}
	if err := m.Remove(ctx, "small"); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "m0") {
		t.Fatalf("remove while in use: %v", err)
	}
}

func TestDnsmasqConfig(t *testing.T) {
	n := Network{Name: "vmfestnet0", Kind: KindHostOnly, Bridge: "vmfestnet0", Subnet: "192.168.56.0/24", HostIP: "192.168.56.1"}
	conf, err := DnsmasqConfig(n, "/h/networks/vmfestnet0", []Allocation{{MAC: "52:54:00:AB:00:01", IP: "192.168.56.2", Machine: "web1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"interface=vmfestnet0\n", "bind-interfaces\n", "port=0\n",
		"dhcp-range=192.168.56.0,static,255.255.255.0,3600s\n",
		"dhcp-authoritative\n", "dhcp-rapid-commit\n",
		"dhcp-option=option:router\n", "dhcp-option=option:dns-server\n",
		"dhcp-host=52:54:00:ab:00:01,192.168.56.2,web1\n",
		"dhcp-leasefile=/h/networks/vmfestnet0/leases\n",
		"pid-file=/h/networks/vmfestnet0/dnsmasq.pid\n",
	} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	if got := net4Mask(20); got != "255.255.240.0" {
		t.Errorf("mask /20 = %s", got)
	}
	hosts := dhcpHosts([]Allocation{{MAC: "52:54:00:AB:00:01", IP: "192.168.56.2", Machine: "web_1"}, {MAC: "52:54:00:00:00:02", Machine: "internal-only"}})
	if string(hosts) != "dhcp-host=52:54:00:ab:00:01,192.168.56.2,web-1\n" {
		t.Errorf("dhcp-hosts = %q", hosts)
	}
	leases := ParseLeases([]byte("1700003600 52:54:00:ab:00:01 192.168.56.2 web-1 01:52:54:00:ab:00:01\ngarbage\n"))
	if len(leases) != 1 || leases[0].IP != "192.168.56.2" || leases[0].MAC != "52:54:00:ab:00:01" || !leases[0].Granted().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("leases = %+v", leases)
	}
}

// TestRuntime brings a host-only network up and down in a network
// namespace of its own: bridge with the host address, dnsmasq serving the
// reservations, then nothing left.
func TestRuntime(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	m := newManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := m.Create(ctx, Spec{Name: "vmfestnet0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Down(context.Background(), n) })
	a, err := m.Allocate(ctx, "vmfestnet0", Allocation{Owner: "o", Machine: "m", MAC: "52:54:00:00:00:aa"})
	if err != nil {
		t.Fatal(err)
	}
	lk, err := m.Lock(ctx, n.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Unlock()
	alive := func(Allocation) bool { return true }
	if err := m.Up(ctx, n, alive); err != nil {
		t.Fatal(err)
	}
	if err := m.Up(ctx, n, alive); err != nil {
		t.Fatalf("second Up: %v", err)
	}
	pid := m.DnsmasqRunning(n)
	if pid == 0 {
		log, _ := os.ReadFile(filepath.Join(m.Path(n.Name), DnsmasqLog))
		t.Fatalf("dnsmasq does not run; log:\n%s", log)
	}
	if !LinkExists("vmfestnet0") {
		t.Fatal("no bridge")
	}
	// A network of another state directory with the same bridge name is
	// refused rather than sharing (or taking) the segment.
	other := newManager(t)
	if _, err := other.Create(ctx, Spec{Name: "vmfestnet0", Subnet: "10.1.2.0/24"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "link vmfestnet0 exists and was made by another vmfest state directory") {
		t.Fatalf("Create of a clashing network: %v", err)
	}
	// A stale lease of a machine that no longer runs is dropped, and
	// dnsmasq restarted, by the next Up.
	leases := filepath.Join(m.Path(n.Name), LeasesFile)
	lk.Unlock()
	// An allocation while dnsmasq runs reaches its configuration at once,
	// and so does its release.
	b, err := m.Allocate(ctx, n.Name, Allocation{Owner: "o2", Machine: "m2", MAC: "52:54:00:00:00:bb"})
	if err != nil {
		t.Fatal(err)
	}
	host := fmt.Sprintf("dhcp-host=52:54:00:00:00:bb,%s,m2", b.IP)
	if conf, err := os.ReadFile(filepath.Join(m.Path(n.Name), DnsmasqConf)); err != nil || !strings.Contains(string(conf), host) || m.DnsmasqRunning(n) == 0 {
		t.Fatalf("after an allocation, dnsmasq runs: %v; its configuration (%v):\n%s", m.DnsmasqRunning(n) != 0, err, conf)
	}
	if _, err := m.Release(ctx, "o2"); err != nil {
		t.Fatal(err)
	}
	if conf, err := os.ReadFile(filepath.Join(m.Path(n.Name), DnsmasqConf)); err != nil || strings.Contains(string(conf), host) || m.DnsmasqRunning(n) == 0 {
		t.Fatalf("after a release, dnsmasq runs: %v; its configuration (%v):\n%s", m.DnsmasqRunning(n) != 0, err, conf)
	}
	if err := m.stopDnsmasq(ctx, n); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(leases, []byte(fmt.Sprintf("%d 52:54:00:00:00:aa %s m *\n", time.Now().Unix(), a.IP)), 0o644)
	lk, err = m.Lock(ctx, n.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Settle(ctx, n, func(Allocation) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if LinkExists("vmfestnet0") || m.DnsmasqRunning(n) != 0 || processRuns(pid) {
		t.Fatal("Settle with nothing alive left the bridge or dnsmasq")
	}
	if _, err := os.Stat(leases); !os.IsNotExist(err) {
		t.Fatalf("leases survived: %v", err)
	}
	lk.Unlock()
	if _, err := m.Release(ctx, "o"); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, "vmfestnet0"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get("vmfestnet0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after remove: %v", err)
	}
}
