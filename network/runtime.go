package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
)

// CheckRoot returns an error wrapping ErrNeedRoot, saying why, unless this
// process can create bridges and taps (it runs as root).
func CheckRoot(why string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: %s creates a Linux bridge and taps, which needs root (CAP_NET_ADMIN); run vmfest as root, or use attachment-type nat", ErrNeedRoot, why)
	}
	return nil
}

func linkErr(what string, err error) error {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("%s: %w (%w: run vmfest as root)", what, err, ErrNeedRoot)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// ensureBridge creates the bridge if it is missing, gives it addr (a CIDR
// address; empty for none) and brings it up.
func ensureBridge(name, addr string) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, linkErr("create bridge "+name, err)
		}
		link, err = netlink.LinkByName(name)
	}
	if err != nil {
		return nil, linkErr("bridge "+name, err)
	}
	if link.Type() != "bridge" {
		return nil, fmt.Errorf("interface %s exists and is a %s, not a bridge; name the network otherwise", name, link.Type())
	}
	if addr != "" {
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("bridge %s address %s: %w", name, addr, err)
		}
		// Another vmfest state directory (or someone else) may use a
		// bridge of this name for another subnet: two DHCP servers on
		// one segment would hand out clashing addresses.
		have, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return nil, linkErr("addresses of bridge "+name, err)
		}
		for _, h := range have {
			if !h.IPNet.IP.Equal(a.IPNet.IP) || h.IPNet.String() != a.IPNet.String() {
				return nil, fmt.Errorf("bridge %s already has address %s, not this network's %s: another vmfest state directory or another program uses it; stop its machines or name this network otherwise", name, h.IPNet, a.IPNet)
			}
		}
		if err := netlink.AddrReplace(link, a); err != nil {
			return nil, linkErr("give bridge "+name+" address "+addr, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, linkErr("bring bridge "+name+" up", err)
	}
	return link, nil
}

func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return linkErr(name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return linkErr("delete "+name, err)
	}
	return nil
}

// LinkExists reports whether a network interface of that name exists.
func LinkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// Up makes the network's runtime exist: its bridge (with the host's address
// on a host-only network) and, for host-only, a dnsmasq serving the
// reservations. Leases of allocations for which alive returns false are
// dropped first (their machines are not running, so their leases are of an
// earlier run). Idempotent. The caller holds the network's lock.
func (m *Manager) Up(ctx context.Context, n Network, alive func(Allocation) bool) error {
	if err := CheckRoot("network " + n.Name); err != nil {
		return err
	}
	addr := ""
	if n.Kind == KindHostOnly {
		p, err := n.Prefix()
		if err != nil {
			return fmt.Errorf("network %s: subnet %q: %w", n.Name, n.Subnet, err)
		}
		addr = fmt.Sprintf("%s/%d", n.HostIP, p.Bits())
	}
	if _, err := ensureBridge(n.Bridge, addr); err != nil {
		return fmt.Errorf("network %s: %w", n.Name, err)
	}
	if n.Kind != KindHostOnly {
		return nil
	}
	allocs, err := m.Allocations(n.Name)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, a := range allocs {
		if alive(a) {
			keep[strings.ToLower(a.MAC)] = true
		}
	}
	changed, err := m.writeConfig(n, allocs)
	if err != nil {
		return err
	}
	running := m.dnsmasqPID(n) != 0
	if running && !changed && !m.staleLeases(n, keep) {
		return nil
	}
	if running {
		if err := m.stopDnsmasq(ctx, n); err != nil {
			return err
		}
	}
	if _, err := m.filterLeases(n, keep); err != nil {
		return fmt.Errorf("network %s: leases: %w", n.Name, err)
	}
	return m.startDnsmasq(ctx, n)
}

// Down tears the network's runtime down: dnsmasq stopped, leases removed,
// bridge deleted. Idempotent. The caller holds the network's lock.
func (m *Manager) Down(ctx context.Context, n Network) error {
	var errs []error
	if n.Kind == KindHostOnly {
		if err := m.stopDnsmasq(ctx, n); err != nil {
			errs = append(errs, err)
		}
		os.Remove(filepath.Join(m.Path(n.Name), LeasesFile))
	}
	if LinkExists(n.Bridge) {
		if err := CheckRoot("removing network " + n.Name); err != nil {
			return err
		}
		errs = append(errs, deleteLink(n.Bridge))
	}
	return errors.Join(errs...)
}

// Settle brings the runtime in line with the machines that run on the
// network after one left: down when none of its allocations is alive,
// else up with the departed machines' leases dropped. The caller holds the
// network's lock.
func (m *Manager) Settle(ctx context.Context, n Network, alive func(Allocation) bool) error {
	allocs, err := m.Allocations(n.Name)
	if err != nil {
		return err
	}
	for _, a := range allocs {
		if alive(a) {
			return m.Up(ctx, n, alive)
		}
	}
	return m.Down(ctx, n)
}

// PlugTap puts the tap (created by QEMU) into the bridge and brings it up.
func PlugTap(tap, bridge string) error {
	t, err := netlink.LinkByName(tap)
	if err != nil {
		return linkErr("tap "+tap, err)
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return linkErr("bridge "+bridge, err)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("%s is a %s, not a bridge", bridge, br.Type())
	}
	if err := netlink.LinkSetMaster(t, br); err != nil {
		return linkErr("put tap "+tap+" into bridge "+bridge, err)
	}
	if err := netlink.LinkSetUp(t); err != nil {
		return linkErr("bring tap "+tap+" up", err)
	}
	return nil
}

// CheckBridge returns an error unless name is an existing bridge.
func CheckBridge(name string) error {
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return fmt.Errorf("bridged-interface %s: no such interface on this host", name)
	}
	if err != nil {
		return linkErr("bridged-interface "+name, err)
	}
	if link.Type() != "bridge" {
		return fmt.Errorf("bridged-interface %s is a %s, not a bridge; vmfest plugs a tap into an existing Linux bridge", name, link.Type())
	}
	return nil
}

// DeleteTap removes a tap left behind (QEMU removes the taps it made when
// it exits; this is for the ones a crash may leave).
func DeleteTap(name string) error { return deleteLink(name) }

// Neighbour returns the IPv4 address the bridge's neighbour (ARP) table
// holds for mac, or "" if none.
func Neighbour(bridge, mac string) (string, error) {
	link, err := netlink.LinkByName(bridge)
	if err != nil {
		return "", linkErr("bridge "+bridge, err)
	}
	neighs, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return "", linkErr("neighbours of "+bridge, err)
	}
	want, err := net.ParseMAC(mac)
	if err != nil {
		return "", err
	}
	for _, nb := range neighs {
		if nb.HardwareAddr.String() == want.String() && nb.IP.To4() != nil && nb.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE) == 0 {
			return nb.IP.String(), nil
		}
	}
	return "", nil
}
