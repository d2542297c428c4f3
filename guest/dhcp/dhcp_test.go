//go:build linux

package dhcp

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vmfest/vmfest/internal/netnstest"
)

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		failed int
		want   time.Duration
	}{
		{0, 0}, {1, time.Second}, {2, 2 * time.Second}, {6, 32 * time.Second}, {7, time.Minute}, {40, time.Minute},
	} {
		if got := backoff(tc.failed); got != tc.want {
			t.Errorf("backoff(%d) = %v, want %v", tc.failed, got, tc.want)
		}
	}
}

func TestBroadcast(t *testing.T) {
	for _, tc := range []struct{ cidr, want string }{
		{"192.168.56.7/24", "192.168.56.255"},
		{"10.0.2.15/8", "10.255.255.255"},
		{"172.16.5.4/30", "172.16.5.7"},
	} {
		ip, n, err := net.ParseCIDR(tc.cidr)
		if err != nil {
			t.Fatal(err)
		}
		n.IP = ip
		if got := broadcast(n).String(); got != tc.want {
			t.Errorf("broadcast(%s) = %s, want %s", tc.cidr, got, tc.want)
		}
	}
}

func TestMatches(t *testing.T) {
	for name, want := range map[string]bool{"eth0": true, "eth12": true, "lo": false, "veth0": false} {
		if got := Matches("eth*", name); got != want {
			t.Errorf("Matches(eth*, %q) = %v", name, got)
		}
	}
	if Matches("", "eth0") {
		t.Error("no pattern matches eth0")
	}
	if err := New(Config{Pattern: "eth["}).Run(context.Background()); err == nil || !strings.Contains(err.Error(), `"eth["`) {
		t.Errorf("Run with a bad pattern: %v", err)
	}
}

// TestClientAgainstDnsmasq runs the client on a veth whose peer serves
// DHCP with dnsmasq, in a network namespace of the test's own: it leases
// an address, and leases anew with the link's new MAC and the new host
// name when the MAC changes, at once while the link is up, and once the
// carrier is back when the MAC changed while it was away (as a clone's,
// whose host holds its link down).
func TestClientAgainstDnsmasq(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	dnsmasq, err := exec.LookPath("dnsmasq")
	if err != nil {
		t.Skip("needs dnsmasq")
	}
	for _, rapid := range []bool{false, true} {
		name := "discover, offer, request, ack"
		if rapid {
			name = "rapid commit"
		}
		t.Run(name, func(t *testing.T) { clientAgainstDnsmasq(t, dnsmasq, rapid) })
	}
}

func clientAgainstDnsmasq(t *testing.T, dnsmasq string, rapid bool) {
	dir := t.TempDir()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "v0"}, PeerName: "v1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(veth) })
	v0, v1 := mustLink(t, "v0"), mustLink(t, "v1")
	setMAC(t, v0, "52:54:00:00:00:01")
	srv, _ := netlink.ParseAddr("192.168.77.1/24")
	if err := netlink.AddrAdd(v1, srv); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(v1); err != nil {
		t.Fatal(err)
	}
	leases := filepath.Join(dir, "leases")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--pid-file=" + filepath.Join(dir, "pid"), "--interface=v1", "--bind-interfaces", "--except-interface=lo",
		"--dhcp-range=192.168.77.10,192.168.77.50,255.255.255.0,1h", "--dhcp-leasefile=" + leases, "--dhcp-authoritative",
		"--dhcp-host=52:54:00:00:00:0a,192.168.77.42", "--dhcp-host=52:54:00:00:00:0b,192.168.77.43",
		"--dhcp-option=option:router,192.168.77.1", "--dhcp-option=option:dns-server,192.168.77.1", "--dhcp-option=option:mtu,1400", "--domain=lab"}
	if rapid {
		args = append(args, "--dhcp-rapid-commit")
	}
	cmd := exec.CommandContext(ctx, dnsmasq, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	var mu sync.Mutex
	host := "first"
	var leasedLines []string
	resolv := filepath.Join(dir, "resolv.conf")
	c := New(Config{
		Pattern:    "v0",
		ResolvConf: resolv,
		Hostname: func() string {
			mu.Lock()
			defer mu.Unlock()
			return host
		},
		Logf: func(f string, a ...any) {
			line := fmt.Sprintf(f, a...)
			t.Log(time.Now().Format("05.000 ") + line)
			if strings.Contains(line, ": leased ") {
				mu.Lock()
				leasedLines = append(leasedLines, line)
				mu.Unlock()
			}
		},
	})
	rctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- c.Run(rctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	// The first lease, from the range; the client set v0 up.
	first := waitAddr(t, "v0", func(ip string) bool { return strings.HasPrefix(ip, "192.168.77.") && ip != "192.168.77.42" })
	waitLease(t, leases, "52:54:00:00:00:01", first, "first")
	waitFor(t, "the default route via 192.168.77.1 on v0", func() bool {
		routes, _ := netlink.RouteList(mustLink(t, "v0"), netlink.FAMILY_V4)
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == "192.168.77.1" {
				return true
			}
		}
		return false
	})
	waitFor(t, "v0's MTU from the lease", func() bool { return mustLink(t, "v0").Attrs().MTU == 1400 })
	if data, err := os.ReadFile(resolv); err != nil || string(data) != "search lab\nnameserver 192.168.77.1\n" {
		t.Errorf("resolv.conf: %q, %v", data, err)
	}

	// A new MAC and name while the link is up.
	mu.Lock()
	host = "second"
	mu.Unlock()
	setMAC(t, v0, "52:54:00:00:00:0a")
	waitAddr(t, "v0", func(ip string) bool { return ip == "192.168.77.42" })
	waitLease(t, leases, "52:54:00:00:00:0a", "192.168.77.42", "second")

	// A new MAC while the carrier is away: the exchange waits for it.
	if err := netlink.LinkSetDown(v1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "v0 without a carrier", func() bool {
		return mustLink(t, "v0").Attrs().RawFlags&(1<<16) == 0 // IFF_LOWER_UP
	})
	mu.Lock()
	host = "third"
	mu.Unlock()
	setMAC(t, v0, "52:54:00:00:00:0b")
	if err := netlink.LinkSetUp(v1); err != nil {
		t.Fatal(err)
	}
	waitAddr(t, "v0", func(ip string) bool { return ip == "192.168.77.43" })
	waitLease(t, leases, "52:54:00:00:00:0b", "192.168.77.43", "third")
	mu.Lock()
	defer mu.Unlock()
	for _, line := range leasedLines {
		if strings.HasSuffix(line, "(rapid commit)") != rapid {
			t.Errorf("with rapid commit %v on the server: %q", rapid, line)
		}
	}
	if len(leasedLines) < 3 {
		t.Errorf("leases taken: %q, want 3", leasedLines)
	}
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func setMAC(t *testing.T, l netlink.Link, mac string) {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	if err := netlink.LinkSetHardwareAddr(l, hw); err != nil {
		t.Fatal(err)
	}
}

// waitFor waits up to 30 s for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 30 s", what)
		}
	}
}

// waitAddr waits until the interface has exactly one IPv4 address and
// want accepts it, and returns it.
func waitAddr(t *testing.T, name string, want func(ip string) bool) string {
	t.Helper()
	var got []string
	var ip string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		addrs, err := netlink.AddrList(mustLink(t, name), netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, a := range addrs {
			got = append(got, a.IPNet.String())
		}
		if len(addrs) == 1 && want(addrs[0].IP.String()) {
			ip = addrs[0].IP.String()
			if ones, _ := addrs[0].Mask.Size(); ones != 24 || addrs[0].Broadcast.String() != "192.168.77.255" {
				t.Fatalf("%s has %s, broadcast %s", name, addrs[0].IPNet, addrs[0].Broadcast)
			}
			return ip
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %v after 30 s", name, got)
		}
	}
}

// waitLease waits until dnsmasq's lease file has mac's lease of ip with
// the host name host.
func waitLease(t *testing.T, path, mac, ip, host string) {
	t.Helper()
	waitFor(t, "lease "+mac+" "+ip+" "+host, func() bool {
		data, _ := os.ReadFile(path)
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) >= 4 && f[1] == mac && f[2] == ip && f[3] == host {
				return true
			}
		}
		return false
	})
}
