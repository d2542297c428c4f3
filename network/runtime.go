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

// ensureBridge creates network n's bridge, marked with this state
// directory's id, if it is missing; gives it addr (a CIDR address; empty
// for none) and brings it up. An existing link of that name is used only
// if it carries the mark: any other is refused and left as it is.
func (m *Manager) ensureBridge(n Network, addr string) (netlink.Link, error) {
	name := n.Bridge
	id, err := m.stateID(true)
	if err != nil {
		return nil, err
	}
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		err = netlink.LinkAdd(br)
		switch {
		case err == nil:
			// The kernel ignores an alias given at creation: mark it
			// now, and delete it if it cannot be marked.
			link, err = netlink.LinkByName(name)
			if err == nil {
				if err = netlink.LinkSetAlias(link, bridgeMark(id, n.Name)); err != nil {
					netlink.LinkDel(link)
					return nil, linkErr("mark bridge "+name, err)
				}
			}
		case errors.Is(err, syscall.EEXIST):
			err = nil // made meanwhile by another: checked below
		default:
			return nil, linkErr("create bridge "+name, err)
		}
		if err == nil {
			link, err = netlink.LinkByName(name)
		}
	}
	if err != nil {
		return nil, linkErr("bridge "+name, err)
	}
	if why := foreign(link, id, n.Name); why != "" {
		return nil, errors.New(why)
	}
	if addr != "" {
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("bridge %s address %s: %w", name, addr, err)
		}
		have, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return nil, linkErr("addresses of bridge "+name, err)
		}
		for _, h := range have {
			if !h.IPNet.IP.Equal(a.IPNet.IP) || h.IPNet.String() != a.IPNet.String() {
				return nil, fmt.Errorf("bridge %s already has address %s, not this network's %s: somebody changed it; remove that address or the bridge", name, h.IPNet, a.IPNet)
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

// deleteBridge deletes network n's bridge if it is this state directory's
// and unchanged: a bridge without the mark (never made, or re-marked by
// somebody) is left alone; a marked one that has ports vmfest did not put
// there, or addresses it did not give, is refused, so nothing the host
// added to it goes with it.
func (m *Manager) deleteBridge(n Network) error {
	link, err := netlink.LinkByName(n.Bridge)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return linkErr("bridge "+n.Bridge, err)
	}
	id, err := m.stateID(false)
	if err != nil {
		return err
	}
	if foreign(link, id, n.Name) != "" {
		return nil // not ours: not this network's runtime
	}
	links, err := listRetry(netlink.LinkList)
	if err != nil {
		return linkErr("list links", err)
	}
	var alien []string
	for _, l := range links {
		if l.Attrs().MasterIndex == link.Attrs().Index && l.Attrs().Alias != tapMark(id) {
			alien = append(alien, l.Attrs().Name)
		}
	}
	addrs, err := listRetry(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return linkErr("addresses of bridge "+n.Bridge, err)
	}
	for _, a := range addrs {
		if a.IPNet == nil || a.IP.IsLinkLocalUnicast() {
			continue
		}
		if n.Kind == KindHostOnly && a.IP.String() == n.HostIP {
			continue
		}
		alien = append(alien, "address "+a.IPNet.String())
	}
	if len(alien) > 0 {
		return fmt.Errorf("bridge %s was changed since vmfest made it (%s): left in place; remove those from it, or delete the bridge yourself", n.Bridge, strings.Join(alien, ", "))
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return linkErr("delete bridge "+n.Bridge, err)
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
	if n.Kind == KindHostOnly {
		// The host may have taken the subnet since the network was made.
		p, _ := n.Prefix()
		if err := m.checkHostOverlap(p); err != nil {
			return fmt.Errorf("network %s: %w", n.Name, err)
		}
	}
	if _, err := m.ensureBridge(n, addr); err != nil {
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
// bridge deleted if this state directory made it and nobody changed it
// since (see deleteBridge). Idempotent. The caller holds the network's
// lock.
func (m *Manager) Down(ctx context.Context, n Network) error {
	var errs []error
	if n.Kind == KindHostOnly {
		if err := m.stopDnsmasq(ctx, n); err != nil {
			errs = append(errs, err)
		}
		os.Remove(filepath.Join(m.Path(n.Name), LeasesFile))
	}
	errs = append(errs, m.deleteBridge(n))
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
