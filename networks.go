package vmfest

import (
	"context"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/vmfest/vmfest/network"
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

// netsOnce is a Local's one network manager, made on first use (which
// creates networks/ in the state directory): one per Local, so that its
// goroutines' address allocations are committed together (see
// network.Manager.Allocate).
type netsOnce struct {
	mu sync.Mutex
	m  *network.Manager
}

func (l *Local) networks() (*network.Manager, error) {
	l.nets.mu.Lock()
	defer l.nets.mu.Unlock()
	if l.nets.m == nil {
		m, err := network.NewManager(filepath.Join(l.home.Root(), store.NetworksDir))
		if err != nil {
			return nil, err
		}
		l.nets.m = m
	}
	return l.nets.m, nil
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

// allocateNetworks gives a machine being created its instance id and a
// place on each host-only or internal network its NICs name (creating a
// network on first use), with a reserved address on host-only ones. On
// error nothing stays allocated.
func (l *Local) allocateNetworks(ctx context.Context, r *record, keys []string) error {
	r.Net = netRecord{ID: network.NewInstanceID(), NICs: make([]nicRecord, len(r.Hardware.Network)), SSHKeys: keys}
	nm, err := l.networks()
	if err != nil {
		return err
	}
	places, err := nm.Reserve(ctx, network.Owner{ID: r.Net.ID, Name: r.Name}, r.Hardware.Network)
	if err != nil {
		l.releaseNetworks(ctx, *r) // settles what Reserve touched
		return apiError(err)
	}
	for i, p := range places {
		r.Net.NICs[i] = nicRecord{Network: p.Network, IP: p.IP}
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
		if serr := nm.SettleNamed(ctx, name, l.alive("")); serr != nil {
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
		if err := nm.SettleNamed(ctx, n.Network, m.l.alive("")); err != nil {
			m.l.log.Warn("network clean-up after the machine stopped", "machine", m.name, "network", n.Network, "err", err)
		}
	}
}

// attachNetworks prepares the networking of a start (see
// network.Manager.Attach), recording each nat NIC's SSH forward in r. On
// error it holds nothing and the machine's networks are settled again.
func (m *localMachine) attachNetworks(ctx context.Context, r *record) (*network.Attachment, error) {
	if len(r.Net.NICs) < len(r.Hardware.Network) {
		r.Net.NICs = append(r.Net.NICs, make([]nicRecord, len(r.Hardware.Network)-len(r.Net.NICs))...)
	}
	if r.Net.ID == "" {
		r.Net.ID = network.NewInstanceID()
	}
	nm, err := m.l.networks()
	if err != nil {
		return nil, err
	}
	places := make([]network.Place, len(r.Net.NICs))
	for i, n := range r.Net.NICs {
		places[i] = network.Place{Network: n.Network, IP: n.IP}
	}
	a, err := nm.Attach(ctx, network.Owner{ID: r.Net.ID, Name: m.name}, r.Hardware.Network, places, m.l.alive(r.Net.ID))
	if err != nil {
		m.settleNetworks(ctx, *r)
		return nil, apiError(err)
	}
	for i, b := range a.NICs {
		r.Net.NICs[i].SSHPort = b.SSHPort
	}
	if err := writeRecord(m.dir(), *r); err != nil {
		a.Unlock()
		m.settleNetworks(ctx, *r)
		return nil, err
	}
	return a, nil
}
