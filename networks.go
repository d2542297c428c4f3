package vmfest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vmfest/vmfest/cloudinit"
	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// DefaultIPTimeout bounds Machine.IP when its context has no deadline.
const DefaultIPTimeout = 2 * time.Minute

// Where an address was learnt (Address.Source).
const (
	SourceLease      = "lease"
	SourceAgent      = "agent"
	SourceNeighbour  = "neighbour"
	SourceNATForward = "nat-forward"
)

// NICInfo describes one NIC of a machine: where it is plugged in and what
// is known of its address without asking the guest.
type NICInfo struct {
	Slot       int    `json:"slot"`
	Attachment string `json:"attachment-type"`
	MAC        string `json:"mac-address,omitempty"`
	// Network is the host-only or internal network, or the bridge of a
	// bridged NIC.
	Network string `json:"network,omitempty"`
	// IP is the address reserved on a host-only network.
	IP string `json:"ip,omitempty"`
	// SSH is the 127.0.0.1:port forwarded to the guest's port 22 through a
	// NAT NIC, while the machine runs.
	SSH string `json:"ssh,omitempty"`
	// Tap is the host end of a host-only, bridged or internal NIC.
	Tap string `json:"tap,omitempty"`
}

// netRecord is the networking part of machine.json.
type netRecord struct {
	// ID identifies this machine instance: network allocations are owned
	// by it, its taps are named after it, and it is the cloud-init
	// instance-id.
	ID string `json:"id,omitempty"`
	// NICs are indexed by slot.
	NICs []nicRecord `json:"nics,omitempty"`
	// SSHKeys are the user's keys for the cloud-init seed.
	SSHKeys []string `json:"ssh-keys,omitempty"`
}

type nicRecord struct {
	// Network is the host-only or internal network the NIC is on.
	Network string `json:"network,omitempty"`
	// IP is the address reserved on a host-only network.
	IP string `json:"ip,omitempty"`
	// SSHPort is a NAT NIC's loopback port forwarded to the guest's port
	// 22, chosen at each start.
	SSHPort int `json:"ssh-port,omitempty"`
}

func (l *Local) networks() (*network.Manager, error) {
	return network.NewManager(filepath.Join(l.home.Root(), store.NetworksDir))
}

// Networks implements Server.
func (l *Local) Networks(ctx context.Context) ([]Network, error) {
	nm, err := l.networks()
	if err != nil {
		return nil, err
	}
	list, err := nm.List()
	if err != nil {
		return nil, err
	}
	out := make([]Network, len(list))
	for i, n := range list {
		out[i] = l.networkOf(nm, n)
	}
	return out, nil
}

func (l *Local) networkOf(nm *network.Manager, n network.Network) Network {
	out := Network{Name: n.Name, Kind: n.Kind, Bridge: n.Bridge, Subnet: n.Subnet, HostIP: n.HostIP}
	allocs, _ := nm.Allocations(n.Name)
	seen := map[string]bool{}
	for _, a := range allocs {
		if !seen[a.Machine] {
			seen[a.Machine] = true
			out.Machines = append(out.Machines, a.Machine)
		}
	}
	sort.Strings(out.Machines)
	return out
}

// CreateNetwork implements Server. Nothing is created on the host until a
// machine on the network starts.
func (l *Local) CreateNetwork(ctx context.Context, s NetworkSpec) (Network, error) {
	nm, err := l.networks()
	if err != nil {
		return Network{}, err
	}
	n, err := nm.Create(ctx, network.Spec{Name: s.Name, Kind: s.Kind, Subnet: s.Subnet})
	if err != nil {
		return Network{}, apiError(err)
	}
	return l.networkOf(nm, n), nil
}

// RemoveNetwork implements Server. It is refused (ErrWrongState) while
// any machine has a NIC on the network.
func (l *Local) RemoveNetwork(ctx context.Context, name string) error {
	nm, err := l.networks()
	if err != nil {
		return err
	}
	return apiError(nm.Remove(ctx, name))
}

// newInstanceID returns a random machine instance id.
func newInstanceID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// tapName is the tap of NIC slot of the machine instance id: at most 15
// bytes, unique per instance and slot.
func tapName(id string, slot int) string {
	if len(id) > 8 {
		id = id[:8]
	}
	return fmt.Sprintf("vmt%s-%d", id, slot)
}

// networkOfNIC returns the vmfest network a NIC is on, if any.
func networkOfNIC(n spec.NIC) (name, kind string) {
	switch n.AttachmentType {
	case spec.AttachHostOnly:
		return n.HostOnlyInterface, network.KindHostOnly
	case spec.AttachInternal:
		return n.InternalNetwork, network.KindInternal
	}
	return "", ""
}

// allocateNetworks gives a machine being created its instance id and a
// place on each host-only or internal network its NICs name (creating a
// network on first use), with a reserved address on host-only ones. On
// error nothing stays allocated.
func (l *Local) allocateNetworks(ctx context.Context, r *record, keys []string) error {
	r.Net = netRecord{ID: newInstanceID(), NICs: make([]nicRecord, len(r.Hardware.Network)), SSHKeys: keys}
	nm, err := l.networks()
	if err != nil {
		return err
	}
	for i, n := range r.Hardware.Network {
		name, kind := networkOfNIC(n)
		if name == "" {
			continue
		}
		if _, err := nm.Ensure(ctx, name, kind); err != nil {
			l.releaseNetworks(ctx, *r)
			return fmt.Errorf("network[%d]: %w", i, apiError(err))
		}
		a, err := nm.Allocate(ctx, name, network.Allocation{Owner: r.Net.ID, Machine: r.Name, Slot: i, MAC: n.MACAddress})
		if err != nil {
			l.releaseNetworks(ctx, *r)
			return fmt.Errorf("network[%d]: %w", i, apiError(err))
		}
		r.Net.NICs[i] = nicRecord{Network: name, IP: a.IP}
	}
	return nil
}

// releaseNetworks frees a machine's allocations and settles the networks
// it was on (a network nobody runs on any more is taken down). Only a
// failure to free is returned; one to settle is logged (the addresses are
// free either way, and the next start or stop settles again).
func (l *Local) releaseNetworks(ctx context.Context, r record) error {
	if r.Net.ID == "" {
		return nil
	}
	nm, err := l.networks()
	if err != nil {
		return err
	}
	touched, err := nm.Release(context.WithoutCancel(ctx), r.Net.ID)
	for _, name := range touched {
		if serr := l.settleNetwork(ctx, nm, name); serr != nil {
			l.log.Warn("network clean-up after a machine left it", "machine", r.Name, "network", name, "err", serr)
		}
	}
	return err
}

// machineRuns reports whether the named machine runs (or is paused or
// stopping). A machine whose state cannot be read counts as running: its
// networks stay up.
func (l *Local) machineRuns(name string) bool {
	m := &localMachine{l: l, name: name}
	r, err := l.readRecord(name)
	if err != nil {
		return false
	}
	st, err := m.status(context.Background(), r)
	return err != nil || runs(st.State)
}

// runs says whether a machine in state st has a live hypervisor.
func runs(st State) bool { return st == Running || st == Paused || st == Stopping }

// alive reports, for the network package, whether an allocation's machine
// runs; the machine self (being started or stopped) never counts.
func (l *Local) alive(self string) func(network.Allocation) bool {
	return func(a network.Allocation) bool { return a.Owner != self && l.machineRuns(a.Machine) }
}

// settleNetwork takes a network down when no machine on it runs, or drops
// the leases of those that stopped.
func (l *Local) settleNetwork(ctx context.Context, nm *network.Manager, name string) error {
	ctx = context.WithoutCancel(ctx)
	n, err := nm.Get(name)
	if err != nil {
		return nil // removed meanwhile
	}
	lk, err := nm.Lock(ctx, name)
	if err != nil {
		return nil
	}
	defer lk.Unlock()
	return nm.Settle(ctx, n, l.alive(""))
}

// settleNetworks settles every network a machine that stopped was on.
// Failures are logged: the machine is off either way.
func (m *localMachine) settleNetworks(ctx context.Context, r record) {
	nm, err := m.l.networks()
	if err != nil {
		return
	}
	done := map[string]bool{}
	for _, n := range r.Net.NICs {
		if n.Network == "" || done[n.Network] {
			continue
		}
		done[n.Network] = true
		if err := m.l.settleNetwork(ctx, nm, n.Network); err != nil {
			m.l.log.Warn("network clean-up after the machine stopped", "machine", m.name, "network", n.Network, "err", err)
		}
	}
}

// netStart is the networking of one start in progress: the locks of the
// machine's networks, held from bringing them up until the taps QEMU made
// are plugged in (so a machine stopping meanwhile cannot take a network
// down under it), and what QEMU is given.
type netStart struct {
	m        *localMachine
	r        record
	locks    []*store.Lock
	backends []driver.NIC
	plugs    []plug
	cidata   string
	nm       *network.Manager
}

// plug is one tap QEMU makes and where it goes: the bridge of a vmfest
// network (net set) or a host bridge a bridged NIC names.
type plug struct {
	tap     string
	net     *network.Network
	bridged string
}

// unlock releases the network locks; safe on nil and to repeat.
func (s *netStart) unlock() {
	if s == nil {
		return
	}
	for _, lk := range s.locks {
		lk.Unlock()
	}
	s.locks = nil
}

// plug puts QEMU's taps into their bridges, then releases the locks.
func (s *netStart) plug() error {
	if s == nil {
		return nil
	}
	defer s.unlock()
	for _, p := range s.plugs {
		var err error
		if p.net != nil {
			err = s.nm.PlugTap(p.tap, *p.net)
		} else {
			err = s.nm.PlugTapBridged(p.tap, p.bridged)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// undo settles the networks again after a failed start.
func (s *netStart) undo() {
	s.unlock()
	s.m.settleNetworks(context.Background(), s.r)
}

// setUpNetworks prepares a start: root checked up front when a NIC needs a
// bridge, the machine's networks brought up, the taps named, a free
// loopback port chosen for each NAT NIC's SSH forward (recorded in r), and
// the cloud-init seed written.
func (m *localMachine) setUpNetworks(ctx context.Context, r *record) (s *netStart, err error) {
	s = &netStart{m: m, r: *r, backends: make([]driver.NIC, len(r.Hardware.Network))}
	held := s // every error return sets s to nil; its locks must still go
	defer func() {
		if err != nil {
			held.unlock()
			m.settleNetworks(ctx, *r)
		}
	}()
	if len(r.Net.NICs) < len(r.Hardware.Network) {
		r.Net.NICs = append(r.Net.NICs, make([]nicRecord, len(r.Hardware.Network)-len(r.Net.NICs))...)
	}
	if r.Net.ID == "" {
		r.Net.ID = newInstanceID()
	}
	for i, n := range r.Hardware.Network {
		switch n.AttachmentType {
		case spec.AttachHostOnly, spec.AttachBridged, spec.AttachInternal:
			if err := network.CheckRoot(fmt.Sprintf("network[%d] (%s)", i, n.AttachmentType)); err != nil {
				return nil, err
			}
		}
	}
	nm, err := m.l.networks()
	if err != nil {
		return nil, err
	}
	s.nm = nm
	// Bring the networks up in name order (a fixed lock order).
	bridges := map[string]*network.Network{}
	var names []string
	for i, n := range r.Hardware.Network {
		name, _ := networkOfNIC(n)
		if name == "" {
			continue
		}
		if r.Net.NICs[i].Network != name {
			return nil, fmt.Errorf("network[%d]: the machine has no place on network %s (it was made by an older vmfest); recreate it", i, name)
		}
		if _, ok := bridges[name]; !ok {
			bridges[name] = nil
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		n, err := nm.Get(name)
		if err != nil {
			return nil, apiError(err)
		}
		lk, err := nm.Lock(ctx, name)
		if err != nil {
			return nil, apiError(err)
		}
		s.locks = append(s.locks, lk)
		if err := nm.Up(ctx, n, m.l.alive(r.Net.ID)); err != nil {
			return nil, err
		}
		bridges[name] = &n
	}
	for i, n := range r.Hardware.Network {
		tap := tapName(r.Net.ID, i)
		switch n.AttachmentType {
		case spec.AttachHostOnly, spec.AttachInternal:
			name, _ := networkOfNIC(n)
			// QEMU would attach to an existing tap of that name: wait
			// for the one of a crashed run to go, refuse any other.
			if err := nm.PrepareTap(ctx, tap); err != nil {
				return nil, fmt.Errorf("network[%d]: %w", i, err)
			}
			s.backends[i].Tap = tap
			s.plugs = append(s.plugs, plug{tap: tap, net: bridges[name]})
		case spec.AttachBridged:
			if err := network.CheckBridge(n.BridgedInterface); err != nil {
				return nil, fmt.Errorf("network[%d]: %w", i, err)
			}
			if err := nm.PrepareTap(ctx, tap); err != nil {
				return nil, fmt.Errorf("network[%d]: %w", i, err)
			}
			s.backends[i].Tap = tap
			s.plugs = append(s.plugs, plug{tap: tap, bridged: n.BridgedInterface})
		case spec.AttachNAT:
			port, err := freeLoopbackPort()
			if err != nil {
				return nil, fmt.Errorf("network[%d]: SSH forward: %w", i, err)
			}
			s.backends[i].SSHPort = port
			r.Net.NICs[i].SSHPort = port
		}
	}
	if err := writeRecord(m.dir(), *r); err != nil {
		return nil, err
	}
	s.r = *r
	seed := filepath.Join(m.dir(), store.CIDataISO)
	if !r.Image.CloudInit {
		os.Remove(seed)
		return s, nil
	}
	_, pub, err := m.l.SSHKey()
	if err != nil {
		return nil, err
	}
	sd := cloudinit.Seed{
		InstanceID:     r.Net.ID,
		Hostname:       m.name,
		User:           r.Image.Username,
		Password:       r.Image.Password,
		AuthorizedKeys: append([]string{pub}, r.Net.SSHKeys...),
	}
	for _, n := range r.Hardware.Network {
		if n.AttachmentType == spec.AttachNone {
			continue
		}
		sd.NICs = append(sd.NICs, cloudinit.NIC{MAC: n.MACAddress, DHCP: n.AttachmentType != spec.AttachInternal})
	}
	if err := sd.WriteISO(seed); err != nil {
		return nil, err
	}
	s.cidata = seed
	return s, nil
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

// nicInfos describes the NICs of a machine in state st.
func (m *localMachine) nicInfos(r record, st State) []NICInfo {
	out := make([]NICInfo, len(r.Hardware.Network))
	for i, n := range r.Hardware.Network {
		out[i] = NICInfo{Slot: i, Attachment: n.AttachmentType, MAC: n.MACAddress}
		var nr nicRecord
		if i < len(r.Net.NICs) {
			nr = r.Net.NICs[i]
		}
		switch n.AttachmentType {
		case spec.AttachHostOnly, spec.AttachInternal:
			out[i].Network, out[i].IP = nr.Network, nr.IP
		case spec.AttachBridged:
			out[i].Network = n.BridgedInterface
		}
		running := st == Running || st == Paused || st == Stopping
		if n.AttachmentType == spec.AttachNAT && nr.SSHPort != 0 && running {
			out[i].SSH = fmt.Sprintf("127.0.0.1:%d", nr.SSHPort)
		}
		if n.AttachmentType != spec.AttachNAT && n.AttachmentType != spec.AttachNone && running && r.Net.ID != "" {
			out[i].Tap = tapName(r.Net.ID, i)
		}
	}
	return out
}

// IP implements Machine. A NAT NIC's address is its SSH forward on
// 127.0.0.1, known at once. For the others the sources are asked in turn
// until one knows the NIC's address: the dnsmasq lease confirming the
// host-only reservation (granted during this run), the guest agent's
// interface list, the bridge's neighbour table. Without a deadline on ctx
// the wait is bounded by DefaultIPTimeout.
func (m *localMachine) IP(ctx context.Context, slot int) (Address, error) {
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return Address{}, err
	}
	if slot < 0 || slot >= len(r.Hardware.Network) {
		return Address{}, fmt.Errorf("%w: machine %s has no NIC in slot %d (it has %d)", ErrInvalid, m.name, slot, len(r.Hardware.Network))
	}
	nic := r.Hardware.Network[slot]
	if nic.AttachmentType == spec.AttachNone {
		return Address{}, fmt.Errorf("%w: machine %s: network[%d] is not attached (attachment-type none), so it has no address", ErrInvalid, m.name, slot)
	}
	st, err := m.State(ctx)
	if err != nil {
		return Address{}, err
	}
	if err := m.need("get the address of", st, Running); err != nil {
		return Address{}, err
	}
	var nr nicRecord
	if slot < len(r.Net.NICs) {
		nr = r.Net.NICs[slot]
	}
	if nic.AttachmentType == spec.AttachNAT {
		if nr.SSHPort == 0 {
			return Address{}, fmt.Errorf("machine %s: network[%d] is nat and has no SSH forward (started by an older vmfest?); restart it", m.name, slot)
		}
		return Address{IP: "127.0.0.1", Port: nr.SSHPort, Source: SourceNATForward}, nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultIPTimeout)
		defer cancel()
	}
	begun := time.Now()
	sources := m.ipSources(r, slot)
	said := make([]string, len(sources))
	for {
		for i, src := range sources {
			ip, note := src.fn(ctx)
			if ip != "" {
				return Address{IP: ip, Source: src.name}, nil
			}
			said[i] = src.name + ": " + note
		}
		select {
		case <-ctx.Done():
			return Address{}, fmt.Errorf("machine %s: %w: no address for network[%d] (%s) after %s; tried %s",
				m.name, ErrTimeout, slot, describeNIC(nic), time.Since(begun).Round(100*time.Millisecond), strings.Join(said, "; "))
		case <-time.After(250 * time.Millisecond):
		}
		if st, err := m.State(ctx); err == nil && st != Running {
			return Address{}, fmt.Errorf("machine %s: it became %s while waiting for the address of network[%d]", m.name, st, slot)
		}
	}
}

func describeNIC(n spec.NIC) string {
	switch n.AttachmentType {
	case spec.AttachHostOnly:
		return "host-only on " + n.HostOnlyInterface
	case spec.AttachBridged:
		return "bridged on " + n.BridgedInterface
	case spec.AttachInternal:
		return "internal network " + n.InternalNetwork
	}
	return n.AttachmentType
}

type ipSource struct {
	name string
	// fn returns the address, or "" and what it found instead.
	fn func(ctx context.Context) (ip, note string)
}

// ipSources lists, in order, where the address of NIC slot can be learnt.
func (m *localMachine) ipSources(r record, slot int) []ipSource {
	nic := r.Hardware.Network[slot]
	mac := strings.ToLower(nic.MACAddress)
	var nr nicRecord
	if slot < len(r.Net.NICs) {
		nr = r.Net.NICs[slot]
	}
	var out []ipSource
	if nic.AttachmentType == spec.AttachHostOnly {
		out = append(out, ipSource{SourceLease, func(ctx context.Context) (string, string) {
			return m.leaseIP(nr, mac)
		}})
	}
	out = append(out, ipSource{SourceAgent, func(ctx context.Context) (string, string) {
		return m.agentIP(ctx, mac)
	}})
	bridge := ""
	switch nic.AttachmentType {
	case spec.AttachHostOnly:
		if nm, err := m.l.networks(); err == nil {
			if n, err := nm.Get(nr.Network); err == nil {
				bridge = n.Bridge
			}
		}
	case spec.AttachBridged:
		bridge = nic.BridgedInterface
	}
	if bridge != "" {
		out = append(out, ipSource{SourceNeighbour, func(ctx context.Context) (string, string) {
			ip, err := network.Neighbour(bridge, mac)
			if err != nil {
				return "", err.Error()
			}
			if ip == "" {
				return "", "no entry for " + mac + " on " + bridge
			}
			return ip, ""
		}})
	}
	return out
}

// leaseIP confirms the reserved address by a lease dnsmasq granted it
// during the current run.
func (m *localMachine) leaseIP(nr nicRecord, mac string) (string, string) {
	if nr.IP == "" {
		return "", "no address reserved"
	}
	nm, err := m.l.networks()
	if err != nil {
		return "", err.Error()
	}
	leases, err := nm.Leases(nr.Network)
	if err != nil {
		return "", err.Error()
	}
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return "", err.Error()
	}
	st, err := m.status(context.Background(), r)
	if err != nil || st.Since.IsZero() {
		return "", "not running"
	}
	started := st.Since.Add(-2 * time.Second)
	for _, l := range leases {
		if l.MAC != mac {
			continue
		}
		if l.IP != nr.IP {
			return "", fmt.Sprintf("lease of %s for %s, not the reserved %s", l.IP, mac, nr.IP)
		}
		if l.Granted().Before(started) {
			return "", fmt.Sprintf("only a lease from an earlier run for %s (reserved %s)", mac, nr.IP)
		}
		return nr.IP, ""
	}
	return "", fmt.Sprintf("no lease for %s yet (reserved %s)", mac, nr.IP)
}

// agentIP asks the guest agent for the IPv4 address of the interface with
// mac, waiting at most 3 seconds for the agent.
func (m *localMachine) agentIP(ctx context.Context, mac string) (string, string) {
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return "", err.Error()
	}
	d, err := m.drv(r)
	if err != nil {
		return "", err.Error()
	}
	if !d.Info().Features.GuestAgent {
		return "", "the " + d.Info().Name + " driver has no guest agent"
	}
	a, err := d.Agent(actx, m.ref(r))
	if err != nil {
		return "", "did not answer"
	}
	defer a.Close()
	ifs, err := driver.Interfaces(actx, a)
	if err != nil {
		return "", err.Error()
	}
	for _, i := range ifs {
		if strings.ToLower(i.HWAddress) != mac {
			continue
		}
		for _, ip := range i.IPAddresses {
			if p := net.ParseIP(ip.Address); ip.Type == "ipv4" && p != nil && !p.IsLinkLocalUnicast() {
				return ip.Address, ""
			}
		}
		return "", fmt.Sprintf("interface %s (%s) has no IPv4 address yet", i.Name, mac)
	}
	return "", "no interface with MAC " + mac
}

// sweepAllocations releases the network allocations no machine owns any
// more: a create or destroy killed half-way leaves them. The caller holds
// machines/ exclusively, so no create or destroy is in flight. Nothing is
// released while a machine record cannot be read (its owner id is
// unknown).
func (l *Local) sweepAllocations(fix bool) []Finding {
	nm, err := l.networks()
	if err != nil {
		return nil
	}
	nets, err := nm.List()
	if err != nil || len(nets) == 0 {
		return nil
	}
	names, err := l.machineNames()
	if err != nil {
		return nil
	}
	owners := map[string]bool{}
	for _, n := range names {
		r, err := l.readRecord(n)
		if err != nil {
			return nil
		}
		owners[r.Net.ID] = true
	}
	var out []Finding
	seen := map[string]bool{}
	for _, n := range nets {
		allocs, err := nm.Allocations(n.Name)
		if err != nil {
			continue
		}
		for _, a := range allocs {
			if owners[a.Owner] || seen[a.Owner] {
				continue
			}
			seen[a.Owner] = true
			f := Finding{Kind: "orphan-allocation", Machine: a.Machine, Path: nm.Path(n.Name),
				Detail: fmt.Sprintf("network %s holds %s for machine %s, which does not exist (an interrupted create or destroy)", n.Name, a.IP, a.Machine)}
			if fix {
				if err := l.releaseNetworks(context.Background(), record{Net: netRecord{ID: a.Owner}}); err != nil {
					f.Detail += ": " + err.Error()
				} else {
					f.Fixed = true
				}
			}
			out = append(out, f)
		}
	}
	return out
}
