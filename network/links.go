package network

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// StateIDFile holds the random id of the state directory that owns this
// networks directory; every link vmfest makes carries it in its alias. The
// name is longer than an interface name, so it cannot be a network's.
const StateIDFile = "state-directory-id"

// MarkPrefix begins the alias (IFLA_IFALIAS) of every link vmfest made.
const MarkPrefix = "vmfest:"

// TapGoneTimeout bounds PrepareTap's wait for the tap of an earlier run,
// which the kernel removes shortly after that run's QEMU exits.
const TapGoneTimeout = 10 * time.Second

// ErrForeignLink: a link of that name exists and this state directory did
// not make it; vmfest leaves it alone.
var ErrForeignLink = errors.New("was not made by vmfest")

// stateID returns this state directory's id, made on first use when create
// is set; "" (and no error) when it has none yet and create is not set.
func (m *Manager) stateID(create bool) (string, error) {
	path := filepath.Join(m.dir, StateIDFile)
	data, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(data))
		if len(id) < 8 || strings.ContainsAny(id, ": \n") {
			return "", fmt.Errorf("%s is corrupt: %q", path, data)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) || !create {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("state directory id: %w", err)
	}
	var b [8]byte
	rand.Read(b[:])
	tmp, err := os.CreateTemp(m.dir, ".state-id-")
	if err != nil {
		return "", fmt.Errorf("state directory id: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(hex.EncodeToString(b[:]) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("state directory id: %w", err)
	}
	os.Chmod(tmp.Name(), 0o644)
	// Link, unlike rename, fails if another process made the id first.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("state directory id: %w", err)
	}
	return m.stateID(false)
}

// bridgeMark is the alias of the bridge of network name.
func bridgeMark(id, name string) string { return MarkPrefix + id + ":" + name }

// tapMark is the alias of every tap vmfest plugged in.
func tapMark(id string) string { return MarkPrefix + id + ":tap" }

// listRetry runs a netlink dump, again when a concurrent change
// interrupted it.
func listRetry[T any](f func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for range 5 {
		out, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}

// foreign describes why link is not this state directory's bridge of
// network name, for an error; "" when it is.
func foreign(link netlink.Link, id, name string) string {
	a := link.Attrs()
	switch {
	case id != "" && a.Alias == bridgeMark(id, name) && link.Type() == "bridge":
		return ""
	case strings.HasPrefix(a.Alias, MarkPrefix):
		return fmt.Sprintf("link %s exists and was made by another vmfest state directory or for another use (alias %q): choose another name", a.Name, a.Alias)
	}
	return fmt.Sprintf("link %s exists and %s: choose another name (it is a %s)", a.Name, ErrForeignLink, link.Type())
}

// checkLinkName refuses a network name that is the name of an existing
// link this state directory did not make as that network's bridge.
func (m *Manager) checkLinkName(name string) error {
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return linkErr("check for a link named "+name, err)
	}
	id, err := m.stateID(false)
	if err != nil {
		return err
	}
	if why := foreign(link, id, name); why != "" {
		return fmt.Errorf("%w: network %q: %s", ErrInvalid, name, why)
	}
	return nil
}

// hostUse is an IPv4 prefix this network namespace uses: an address of a
// link or a route.
type hostUse struct {
	prefix netip.Prefix
	what   string
}

// hostUses lists the IPv4 addresses and routes (all tables) of this
// network namespace, read-only, except those on this state directory's own
// bridges. Routes broader than /8 (the default route, a VPN's 0.0.0.0/1
// and 128.0.0.0/1) are catch-alls, not uses of a subnet, and are left out.
func (m *Manager) hostUses() ([]hostUse, error) {
	id, err := m.stateID(false)
	if err != nil {
		return nil, err
	}
	links, err := listRetry(netlink.LinkList)
	if err != nil {
		return nil, linkErr("list this host's links", err)
	}
	names := map[int]string{}
	own := map[int]bool{}
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = a.Name
		if id != "" && l.Type() == "bridge" && strings.HasPrefix(a.Alias, MarkPrefix+id+":") {
			own[a.Index] = true
		}
	}
	addrs, err := listRetry(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, linkErr("list this host's addresses", err)
	}
	var out []hostUse
	for _, a := range addrs {
		if own[a.LinkIndex] || a.IPNet == nil {
			continue
		}
		p, ok := prefixOf(a.IPNet.IP, a.IPNet.Mask)
		if !ok {
			continue
		}
		out = append(out, hostUse{p.Masked(), fmt.Sprintf("address %s of %s", p, linkName(names, a.LinkIndex))})
	}
	routes, err := listRetry(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, linkErr("list this host's routes", err)
	}
	for _, r := range routes {
		if r.Dst == nil || own[r.LinkIndex] {
			continue
		}
		p, ok := prefixOf(r.Dst.IP, r.Dst.Mask)
		if !ok || p.Bits() < 8 {
			continue
		}
		dev := linkName(names, r.LinkIndex)
		if r.LinkIndex == 0 {
			dev = "no single link"
		}
		kind := "route"
		if r.Type != unix.RTN_UNICAST {
			kind = routeType(r.Type) + " route"
		}
		out = append(out, hostUse{p.Masked(), fmt.Sprintf("%s to %s on %s (table %d)", kind, p.Masked(), dev, r.Table)})
	}
	return out, nil
}

func prefixOf(ip []byte, mask []byte) (netip.Prefix, bool) {
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}, false
	}
	addr = addr.Unmap()
	if !addr.Is4() {
		return netip.Prefix{}, false
	}
	ones := 0
	for _, b := range mask {
		for i := 7; i >= 0; i-- {
			if b&(1<<i) != 0 {
				ones++
			}
		}
	}
	if len(mask) == 16 {
		ones -= 96
	}
	if ones < 0 || ones > 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(addr, ones), true
}

func linkName(names map[int]string, index int) string {
	if n, ok := names[index]; ok {
		return n
	}
	return fmt.Sprintf("link %d", index)
}

func routeType(t int) string {
	switch t {
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BROADCAST:
		return "broadcast"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	}
	return fmt.Sprintf("type-%d", t)
}

// checkHostOverlap refuses p when it overlaps an address or route of this
// network namespace other than this state directory's own bridges.
func (m *Manager) checkHostOverlap(p netip.Prefix) error {
	uses, err := m.hostUses()
	if err != nil {
		return err
	}
	return overlapping(uses, p)
}

// overlapping refuses p when it overlaps one of uses, naming it.
func overlapping(uses []hostUse, p netip.Prefix) error {
	for _, u := range uses {
		if u.prefix.Overlaps(p) {
			return fmt.Errorf("%w: subnet %s overlaps the %s on this host; choose a subnet the host does not use", ErrInvalid, p, u.what)
		}
	}
	return nil
}

// PrepareTap makes sure no link named tap exists before QEMU creates it
// (QEMU would attach to an existing tap rather than make its own). A tap
// of an earlier run of the machine, which the kernel removes shortly after
// that run's QEMU exits, is waited for, and deleted if it is vmfest's and
// still there after a while; any other link of that name is refused. The
// wait is bounded by ctx and TapGoneTimeout.
func (m *Manager) PrepareTap(ctx context.Context, tap string) error {
	ctx, cancel := context.WithTimeout(ctx, TapGoneTimeout)
	defer cancel()
	id, err := m.stateID(false)
	if err != nil {
		return err
	}
	begun := time.Now()
	deleted := false
	for {
		link, err := netlink.LinkByName(tap)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return linkErr("tap "+tap, err)
		}
		ours := id != "" && link.Attrs().Alias == tapMark(id)
		if link.Type() != "tuntap" {
			return fmt.Errorf("link %s exists and %w (a %s, not a tap): remove it or recreate the machine", tap, ErrForeignLink, link.Type())
		}
		if ours && !deleted && time.Since(begun) > TapGoneTimeout/5 {
			// Ours and lingering: nothing but a dead run can hold it.
			if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
				return linkErr("delete the tap "+tap+" of an earlier run", err)
			}
			deleted = true
		}
		select {
		case <-ctx.Done():
			if !ours {
				return fmt.Errorf("tap %s exists and %w: remove it or recreate the machine", tap, ErrForeignLink)
			}
			return fmt.Errorf("tap %s of an earlier run of the machine is still there after %s: %w", tap, time.Since(begun).Round(100*time.Millisecond), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// markTap marks the tap QEMU just made as this state directory's; a tap
// that already carries another mark is refused.
func (m *Manager) markTap(tap string) (netlink.Link, error) {
	id, err := m.stateID(true)
	if err != nil {
		return nil, err
	}
	t, err := netlink.LinkByName(tap)
	if err != nil {
		return nil, linkErr("tap "+tap, err)
	}
	if t.Type() != "tuntap" {
		return nil, fmt.Errorf("link %s is a %s, not the tap QEMU made", tap, t.Type())
	}
	switch t.Attrs().Alias {
	case tapMark(id):
		return t, nil
	case "":
	default:
		return nil, fmt.Errorf("tap %s %w (alias %q)", tap, ErrForeignLink, t.Attrs().Alias)
	}
	if err := netlink.LinkSetAlias(t, tapMark(id)); err != nil {
		return nil, linkErr("mark tap "+tap, err)
	}
	return t, nil
}

// PlugTap marks the tap QEMU made as vmfest's and puts it into the bridge
// of network n, which must carry this state directory's mark.
func (m *Manager) PlugTap(tap string, n Network) error {
	t, err := m.markTap(tap)
	if err != nil {
		return err
	}
	id, err := m.stateID(false)
	if err != nil {
		return err
	}
	br, err := netlink.LinkByName(n.Bridge)
	if err != nil {
		return linkErr("bridge "+n.Bridge, err)
	}
	if why := foreign(br, id, n.Name); why != "" {
		return fmt.Errorf("network %s: %s", n.Name, why)
	}
	return enslave(t, br)
}

// PlugTapBridged marks the tap QEMU made as vmfest's and puts it into the
// host bridge a bridged NIC names. The host's bridge itself is never
// changed: no address, state, alias or setting of it is touched.
func (m *Manager) PlugTapBridged(tap, bridge string) error {
	t, err := m.markTap(tap)
	if err != nil {
		return err
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return linkErr("bridged-interface "+bridge, err)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("bridged-interface %s is a %s, not a bridge", bridge, br.Type())
	}
	return enslave(t, br)
}

// enslave puts tap t into bridge br and brings it up, changing nothing
// of the bridge: the tap takes the bridge's MTU (a bridge whose MTU the
// user did not set follows its smallest port) and a MAC starting with fe
// (a bridge whose MAC the user did not set takes its lowest port's), as
// libvirt does.
func enslave(t, br netlink.Link) error {
	tap, bridge := t.Attrs().Name, br.Attrs().Name
	if mtu := br.Attrs().MTU; mtu > 0 && t.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(t, mtu); err != nil {
			return linkErr("set the MTU of tap "+tap+" to its bridge's", err)
		}
	}
	if mac := t.Attrs().HardwareAddr; len(mac) == 6 && mac[0] != 0xfe {
		high := append(net.HardwareAddr{0xfe}, mac[1:]...)
		if err := netlink.LinkSetHardwareAddr(t, high); err != nil {
			return linkErr("set the MAC of tap "+tap, err)
		}
	}
	if err := netlink.LinkSetMaster(t, br); err != nil {
		return linkErr("put tap "+tap+" into bridge "+bridge, err)
	}
	if err := netlink.LinkSetUp(t); err != nil {
		return linkErr("bring tap "+tap+" up", err)
	}
	return nil
}
