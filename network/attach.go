package network

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"sort"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// NewInstanceID returns a random machine instance id: it owns the
// machine's allocations and names its taps.
func NewInstanceID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// TapName is the tap of NIC slot of the machine instance id: at most 15
// bytes, unique per instance and slot.
func TapName(id string, slot int) string {
	if len(id) > 8 {
		id = id[:8]
	}
	return fmt.Sprintf("vmt%s-%d", id, slot)
}

// Of returns the vmfest network a NIC is on and its kind; "" for a NIC on
// none (nat, bridged, none).
func Of(n spec.NIC) (name, kind string) {
	switch n.AttachmentType {
	case spec.AttachHostOnly:
		return n.HostOnlyInterface, KindHostOnly
	case spec.AttachInternal:
		return n.InternalNetwork, KindInternal
	}
	return "", ""
}

// Place is where one NIC of a machine sits: the vmfest network it is on and
// the address reserved for it there (host-only only). The zero Place is a
// NIC on no vmfest network.
type Place struct {
	Network string
	IP      string
}

// Owner is a machine as the network layer knows it.
type Owner struct {
	// ID is the machine's instance id (see NewInstanceID).
	ID string
	// Name is the machine's name: dnsmasq's host name for it.
	Name string
}

// Reserve gives owner a place on each network its NICs name, creating a
// network on first use, with a reserved address on host-only ones. On
// error nothing stays allocated (settling the networks touched is the
// caller's, with Settle).
func (m *Manager) Reserve(ctx context.Context, o Owner, nics []spec.NIC) ([]Place, error) {
	places := make([]Place, len(nics))
	for i, n := range nics {
		name, kind := Of(n)
		if name == "" {
			continue
		}
		if _, err := m.Ensure(ctx, name, kind); err != nil {
			m.Release(context.WithoutCancel(ctx), o.ID)
			return nil, fmt.Errorf("network[%d]: %w", i, err)
		}
		a, err := m.Allocate(ctx, name, Allocation{Owner: o.ID, Machine: o.Name, Slot: i, MAC: n.MACAddress})
		if err != nil {
			m.Release(context.WithoutCancel(ctx), o.ID)
			return nil, fmt.Errorf("network[%d]: %w", i, err)
		}
		places[i] = Place{Network: name, IP: a.IP}
	}
	return places, nil
}

// SettleNamed takes the named network down when no machine on it runs
// (alive says which do), or drops the leases of those that stopped, under
// the network's lock. A network removed meanwhile is nothing to settle.
func (m *Manager) SettleNamed(ctx context.Context, name string, alive func(Allocation) bool) error {
	ctx = context.WithoutCancel(ctx)
	n, err := m.Get(name)
	if err != nil {
		return nil
	}
	lk, err := m.Lock(ctx, name)
	if err != nil {
		return nil
	}
	defer lk.Unlock()
	return m.Settle(ctx, n, alive)
}

// Backend is the host end Attach prepared for one NIC.
type Backend struct {
	// Tap is the tap the hypervisor creates for a host-only, internal or
	// bridged NIC; Plug puts it into its bridge.
	Tap string
	// SSHPort is a nat NIC's free port on 127.0.0.1, to forward to the
	// guest's port 22.
	SSHPort int
}

// Attachment is the networking of one machine start in progress: the
// locks of its networks, held from bringing them up until the taps the
// hypervisor made are plugged in (so a machine stopping meanwhile cannot
// take a network down under it), and each NIC's host end.
type Attachment struct {
	// NICs are indexed by slot.
	NICs  []Backend
	m     *Manager
	locks []*store.Lock
	plugs []plug
}

// plug is one tap and where it goes: the bridge of a vmfest network (net
// set) or a host bridge a bridged NIC names.
type plug struct {
	tap     string
	net     *Network
	bridged string
}

// Attach prepares a start of the machine o whose NICs are nics and whose
// places Reserve gave: root checked up front when a NIC needs a bridge,
// its networks brought up (alive says which other machines run), its taps
// named and checked free, a free loopback port chosen for each nat NIC's
// SSH forward. The caller starts the hypervisor with the NICs' backends,
// then calls Plug; on any error, Unlock. Attach itself holds nothing on
// error.
func (m *Manager) Attach(ctx context.Context, o Owner, nics []spec.NIC, places []Place, alive func(Allocation) bool) (_ *Attachment, err error) {
	// a, not the result (nil on error), is what holds the locks to let go.
	a := &Attachment{m: m, NICs: make([]Backend, len(nics))}
	defer func() {
		if err != nil {
			a.Unlock()
		}
	}()
	for i, n := range nics {
		switch n.AttachmentType {
		case spec.AttachHostOnly, spec.AttachBridged, spec.AttachInternal:
			if err := CheckRoot(fmt.Sprintf("network[%d] (%s)", i, n.AttachmentType)); err != nil {
				return nil, err
			}
		}
	}
	// Bring the networks up in name order (a fixed lock order).
	bridges := map[string]*Network{}
	var names []string
	for i, n := range nics {
		name, _ := Of(n)
		if name == "" {
			continue
		}
		if i >= len(places) || places[i].Network != name {
			return nil, fmt.Errorf("network[%d]: the machine has no place on network %s (it was made by an older vmfest); recreate it", i, name)
		}
		if _, ok := bridges[name]; !ok {
			bridges[name] = nil
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		n, err := m.Get(name)
		if err != nil {
			return nil, err
		}
		lk, err := m.Lock(ctx, name)
		if err != nil {
			return nil, err
		}
		a.locks = append(a.locks, lk)
		if err := m.Up(ctx, n, alive); err != nil {
			return nil, err
		}
		bridges[name] = &n
	}
	for i, n := range nics {
		tap := TapName(o.ID, i)
		switch n.AttachmentType {
		case spec.AttachHostOnly, spec.AttachInternal:
			name, _ := Of(n)
			// The hypervisor would attach to an existing tap of that
			// name: wait for the one of a crashed run to go, refuse any
			// other.
			if err := m.PrepareTap(ctx, tap); err != nil {
				return nil, fmt.Errorf("network[%d]: %w", i, err)
			}
			a.NICs[i].Tap = tap
			a.plugs = append(a.plugs, plug{tap: tap, net: bridges[name]})
		case spec.AttachBridged:
			if err := CheckBridge(n.BridgedInterface); err != nil {
				return nil, fmt.Errorf("network[%d]: %w", i, err)
			}
			if err := m.PrepareTap(ctx, tap); err != nil {
				return nil, fmt.Errorf("network[%d]: %w", i, err)
			}
			a.NICs[i].Tap = tap
			a.plugs = append(a.plugs, plug{tap: tap, bridged: n.BridgedInterface})
		case spec.AttachNAT:
			port, err := freeLoopbackPort()
			if err != nil {
				return nil, fmt.Errorf("network[%d]: SSH forward: %w", i, err)
			}
			a.NICs[i].SSHPort = port
		}
	}
	return a, nil
}

// Plug puts the hypervisor's taps into their bridges, then releases the
// locks.
func (a *Attachment) Plug() error {
	if a == nil {
		return nil
	}
	defer a.Unlock()
	for _, p := range a.plugs {
		var err error
		if p.net != nil {
			err = a.m.PlugTap(p.tap, *p.net)
		} else {
			err = a.m.PlugTapBridged(p.tap, p.bridged)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Unlock releases the network locks; safe on nil and to repeat.
func (a *Attachment) Unlock() {
	if a == nil {
		return
	}
	for _, lk := range a.locks {
		lk.Unlock()
	}
	a.locks = nil
}

// freeLoopbackPort returns a TCP port free on 127.0.0.1 now.
//
// It is taken below the kernel's ephemeral range (which starts at 32768
// unless an operator moved it), so no outgoing connection of any process
// takes it meanwhile; only a process that binds that very port can, and a
// start whose forward cannot be bound picks new ports (NewSSHPorts).
func freeLoopbackPort() (int, error) {
	for range 32 {
		port := sshPortLow + mrand.IntN(sshPortHigh-sshPortLow+1)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			ln.Close()
			return port, nil
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// The range SSH forwards are taken from: below the usual ephemeral range.
const (
	sshPortLow  = 20000
	sshPortHigh = 32767
)

// NewSSHPorts gives every nat NIC of the attachment a new SSH forward
// port, for a start whose hypervisor could not bind the old ones (another
// process took one between the choice and the bind).
func (a *Attachment) NewSSHPorts() error {
	for i := range a.NICs {
		if a.NICs[i].SSHPort == 0 {
			continue
		}
		port, err := freeLoopbackPort()
		if err != nil {
			return fmt.Errorf("network[%d]: SSH forward: %w", i, err)
		}
		a.NICs[i].SSHPort = port
	}
	return nil
}

// ConfirmLease confirms the address reserved for mac on the named network
// by a lease dnsmasq granted during the run that began at since; else it
// returns "" and what it found instead.
func (m *Manager) ConfirmLease(network, reserved, mac string, since time.Time) (ip, note string) {
	if reserved == "" {
		return "", "no address reserved"
	}
	leases, err := m.Leases(network)
	if err != nil {
		return "", err.Error()
	}
	started := since.Add(-2 * time.Second)
	for _, l := range leases {
		if l.MAC != mac {
			continue
		}
		if l.IP != reserved {
			return "", fmt.Sprintf("lease of %s for %s, not the reserved %s", l.IP, mac, reserved)
		}
		if l.Granted().Before(started) {
			return "", fmt.Sprintf("only a lease from an earlier run for %s (reserved %s)", mac, reserved)
		}
		return reserved, ""
	}
	return "", fmt.Sprintf("no lease for %s yet (reserved %s)", mac, reserved)
}

// Orphan is an allocation no machine owns any more.
type Orphan struct {
	Network string
	Allocation
}

// Orphans lists the allocations, on every network, whose owner is not in
// owners (a create or destroy killed half-way leaves them), one per owner.
func (m *Manager) Orphans(owners map[string]bool) ([]Orphan, error) {
	nets, err := m.List()
	if err != nil {
		return nil, err
	}
	var out []Orphan
	seen := map[string]bool{}
	for _, n := range nets {
		allocs, err := m.Allocations(n.Name)
		if err != nil {
			continue
		}
		for _, a := range allocs {
			if owners[a.Owner] || seen[a.Owner] {
				continue
			}
			seen[a.Owner] = true
			out = append(out, Orphan{Network: n.Name, Allocation: a})
		}
	}
	return out, nil
}

// TapBridge returns the bridge the tap is plugged into, "" when it is in
// none (a start interrupted between the hypervisor making the tap and
// vmfest plugging it in leaves it so).
func TapBridge(tap string) (string, error) {
	link, err := netlink.LinkByName(tap)
	if err != nil {
		return "", linkErr("tap "+tap, err)
	}
	master := link.Attrs().MasterIndex
	if master == 0 {
		return "", nil
	}
	br, err := netlink.LinkByIndex(master)
	if err != nil {
		return "", linkErr("bridge of tap "+tap, err)
	}
	return br.Attrs().Name, nil
}

// Replug puts an unplugged tap of a running machine into its bridge: that
// of the vmfest network name, or the host bridge bridged (name empty),
// under the network's lock.
func (m *Manager) Replug(ctx context.Context, tap, name, bridged string) error {
	if name == "" {
		return m.PlugTapBridged(tap, bridged)
	}
	n, err := m.Get(name)
	if err != nil {
		return err
	}
	lk, err := m.Lock(ctx, name)
	if err != nil {
		return err
	}
	defer lk.Unlock()
	return m.PlugTap(tap, n)
}
