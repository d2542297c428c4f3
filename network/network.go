// Package network manages vmfest's networks on the host: host-only networks
// (a Linux bridge with the host at .1 of its subnet, one dnsmasq serving
// DHCP reservations, and vmfest's own address allocation) and internal
// networks (a bridge with no host address and no DHCP: the machines on it
// reach each other and nothing else). It also plugs taps into bridges and
// reads the bridge's neighbour table.
//
// A network's definition and allocations live in a directory of their own
// (networks/<name>/ in the state directory) and outlive every process; its
// runtime — the bridge and dnsmasq — exists only while a machine on it runs
// (see Manager.Up and Manager.Down), so powering every machine off leaves
// nothing on the host.
//
// Everything that changes a network holds the flock of its directory, so
// several processes (the CLI, a server) can use one state directory at once.
package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Kinds of network.
const (
	KindHostOnly = "host-only"
	KindInternal = "internal"
)

// File names inside a network's directory.
const (
	NetworkFile     = "network.json"
	AllocationsFile = "allocations.json"
	DnsmasqConf     = "dnsmasq.conf"
	LeasesFile      = "leases"
	DnsmasqPID      = "dnsmasq.pid"
	DnsmasqLog      = "dnsmasq.log"
)

// DefaultSubnet is the first host-only subnet, VirtualBox's vboxnet0 range.
const DefaultSubnet = "192.168.56.0/24"

// Errors callers can test for with errors.Is.
var (
	ErrNotFound = errors.New("no such network")
	ErrExists   = errors.New("network already exists")
	ErrInUse    = errors.New("network in use")
	ErrFull     = errors.New("no free address")
	// ErrInvalid: a bad network name, kind or subnet.
	ErrInvalid = errors.New("invalid")
	// ErrNeedRoot: creating bridges and taps needs root (CAP_NET_ADMIN).
	ErrNeedRoot = errors.New("needs root")
)

// Network is one vmfest network's definition.
type Network struct {
	Name string `json:"name"`
	// Kind is host-only or internal.
	Kind string `json:"kind"`
	// Bridge is the Linux bridge behind the network (its name).
	Bridge string `json:"bridge"`
	// Subnet is the host-only network's IPv4 subnet; empty for internal.
	Subnet string `json:"subnet,omitempty"`
	// HostIP is the host's address on a host-only network (.1).
	HostIP  string    `json:"host-ip,omitempty"`
	Created time.Time `json:"created"`
}

// Prefix returns the subnet as a netip.Prefix.
func (n Network) Prefix() (netip.Prefix, error) { return netip.ParsePrefix(n.Subnet) }

// Allocation is one machine NIC's place on a network: on a host-only
// network, with its reserved address.
type Allocation struct {
	// Owner identifies the machine instance (its id): allocations are
	// released by owner, so a failed create of a name that exists cannot
	// release the existing machine's addresses.
	Owner   string `json:"owner"`
	Machine string `json:"machine"`
	Slot    int    `json:"slot"`
	MAC     string `json:"mac"`
	// IP is the reserved address (host-only networks only).
	IP string `json:"ip,omitempty"`
}

// Spec describes a network to create.
type Spec struct {
	Name string
	// Kind is host-only (default) or internal.
	Kind string
	// Subnet in CIDR form; default: the next free 192.168.X.0/24.
	Subnet string
}

// Manager manages the networks under one directory (networks/ of a state
// directory). Its only state in memory is the batches of concurrent
// Allocate calls in flight; everything else is on disk, so it is safe for
// concurrent use and from several processes at once (each with a Manager
// of its own). Share one Manager between the goroutines of a process so
// their allocations are committed together.
type Manager struct {
	dir string

	mu sync.Mutex
	// open is each network's batch of Allocate calls still open to
	// newcomers (see Allocate).
	open map[string]*allocBatch
}

// NewManager returns a manager of the networks under dir, creating dir.
func NewManager(dir string) (*Manager, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("networks directory: %w", err)
	}
	return &Manager{dir: dir}, nil
}

// Path returns the directory of the named network.
func (m *Manager) Path(name string) string { return filepath.Join(m.dir, name) }

func checkName(name string) error {
	if !spec.ValidInterfaceName(name) {
		return fmt.Errorf("%w: network name %q: use 1-15 letters, digits, '.', '_' or '-', starting with a letter or digit (it names a Linux bridge)", ErrInvalid, name)
	}
	return nil
}

// Lock takes the named network's lock, waiting until it is free or ctx is
// done. Up, Down, Sync and the other runtime operations expect the caller
// to hold it; Create, Ensure, Allocate, Release and Remove take it
// themselves.
func (m *Manager) Lock(ctx context.Context, name string) (*store.Lock, error) {
	lk, err := store.LockDir(ctx, m.Path(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return lk, err
}

// Get returns the named network.
func (m *Manager) Get(name string) (Network, error) {
	if err := checkName(name); err != nil {
		return Network{}, err
	}
	data, err := os.ReadFile(filepath.Join(m.Path(name), NetworkFile))
	if errors.Is(err, fs.ErrNotExist) {
		return Network{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return Network{}, fmt.Errorf("network %s: %w", name, err)
	}
	var n Network
	if err := json.Unmarshal(data, &n); err != nil {
		return Network{}, fmt.Errorf("network %s: %s is corrupt: %w", name, NetworkFile, err)
	}
	return n, nil
}

// List returns every network, sorted by name.
func (m *Manager) List() ([]Network, error) {
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	var out []Network
	for _, e := range entries {
		if !e.IsDir() || e.Name()[0] == '.' {
			continue
		}
		n, err := m.Get(e.Name())
		if err != nil {
			continue // being created or removed
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Create defines a new network. Its name must not be that of a link this
// state directory did not make (see docs/networking.md, "Which links vmfest
// touches"). A host-only network's subnet overlaps no other vmfest network
// and no address or route of this host's network namespace; without one
// it gets the next such 192.168.X.0/24. Nothing is created on the host
// until a machine on it starts.
func (m *Manager) Create(ctx context.Context, s Spec) (Network, error) {
	lk, err := store.LockDir(ctx, m.dir)
	if err != nil {
		return Network{}, err
	}
	defer lk.Unlock()
	return m.create(s)
}

// Ensure returns the named network, creating it with defaults on first use.
// An existing network of another kind is an error.
func (m *Manager) Ensure(ctx context.Context, name, kind string) (Network, error) {
	if n, err := m.Get(name); err == nil {
		if n.Kind != kind {
			return Network{}, fmt.Errorf("%w: network %q is %s, not %s", ErrInvalid, name, n.Kind, kind)
		}
		return n, nil
	}
	lk, err := store.LockDir(ctx, m.dir)
	if err != nil {
		return Network{}, err
	}
	defer lk.Unlock()
	n, err := m.Get(name)
	if err == nil {
		if n.Kind != kind {
			return Network{}, fmt.Errorf("%w: network %q is %s, not %s", ErrInvalid, name, n.Kind, kind)
		}
		return n, nil
	}
	return m.create(Spec{Name: name, Kind: kind})
}

// create defines a network; the caller holds the networks directory's lock.
func (m *Manager) create(s Spec) (Network, error) {
	if err := checkName(s.Name); err != nil {
		return Network{}, err
	}
	if s.Kind == "" {
		s.Kind = KindHostOnly
	}
	n := Network{Name: s.Name, Kind: s.Kind, Bridge: s.Name, Created: time.Now().UTC()}
	if s.Kind != KindHostOnly && s.Kind != KindInternal {
		return Network{}, fmt.Errorf("%w: network kind %q: allowed: %s, %s", ErrInvalid, s.Kind, KindHostOnly, KindInternal)
	}
	// The network's bridge carries its name: a link of that name that this
	// state directory did not make is the host's, and stays the host's.
	if err := m.checkLinkName(s.Name); err != nil {
		return Network{}, err
	}
	switch s.Kind {
	case KindHostOnly:
		existing, err := m.List()
		if err != nil {
			return Network{}, err
		}
		var taken []netip.Prefix
		for _, e := range existing {
			if p, err := e.Prefix(); err == nil {
				taken = append(taken, p)
			}
		}
		uses, err := m.hostUses()
		if err != nil {
			return Network{}, fmt.Errorf("network %s: %w", s.Name, err)
		}
		var p netip.Prefix
		if s.Subnet == "" {
			var host []netip.Prefix
			for _, u := range uses {
				host = append(host, u.prefix)
			}
			p, err = nextFreeSubnet(taken, host)
			if err != nil {
				return Network{}, err
			}
		} else {
			p, err = checkSubnet(s.Subnet, taken)
			if err != nil {
				return Network{}, err
			}
			if err := overlapping(uses, p); err != nil {
				return Network{}, err
			}
		}
		n.Subnet = p.String()
		n.HostIP = p.Addr().Next().String()
	case KindInternal:
		if s.Subnet != "" {
			return Network{}, fmt.Errorf("%w: network %q: an internal network has no subnet (the host is not on it)", ErrInvalid, s.Name)
		}
	default:
		return Network{}, fmt.Errorf("%w: network kind %q: allowed: %s, %s", ErrInvalid, s.Kind, KindHostOnly, KindInternal)
	}
	tmp, err := os.MkdirTemp(m.dir, ".creating-"+s.Name+"-")
	if err != nil {
		return Network{}, fmt.Errorf("create network %s: %w", s.Name, err)
	}
	defer os.RemoveAll(tmp)
	// dnsmasq, which runs as nobody, reads the reservations in it.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Network{}, fmt.Errorf("create network %s: %w", s.Name, err)
	}
	data, _ := json.MarshalIndent(n, "", "  ")
	if err := store.WriteFileAtomic(filepath.Join(tmp, NetworkFile), append(data, '\n'), 0o644); err != nil {
		return Network{}, fmt.Errorf("create network %s: %w", s.Name, err)
	}
	if err := writeAllocations(tmp, nil); err != nil {
		return Network{}, fmt.Errorf("create network %s: %w", s.Name, err)
	}
	if err := os.Rename(tmp, m.Path(s.Name)); err != nil {
		if errors.Is(err, fs.ErrExist) || isNotEmpty(err) {
			return Network{}, fmt.Errorf("%w: %q", ErrExists, s.Name)
		}
		return Network{}, fmt.Errorf("create network %s: %w", s.Name, err)
	}
	return n, store.SyncDir(m.dir)
}

// checkSubnet validates a user's subnet: IPv4, /8 to /30, its network
// address given, overlapping no other vmfest network.
func checkSubnet(s string, taken []netip.Prefix) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%w: subnet %q: want an IPv4 subnet in CIDR form like 192.168.60.0/24", ErrInvalid, s)
	}
	if p.Bits() < 8 || p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("%w: subnet %s: the prefix length must be 8 to 30", ErrInvalid, s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%w: subnet %s: give the network address, %s", ErrInvalid, s, p.Masked())
	}
	for _, t := range taken {
		if t.Overlaps(p) {
			return netip.Prefix{}, fmt.Errorf("%w: subnet %s overlaps the vmfest network on %s", ErrInvalid, s, t)
		}
	}
	return p, nil
}

// nextFreeSubnet returns the first 192.168.X.0/24, X from 56 up, that
// overlaps neither a vmfest network nor an address of this host.
func nextFreeSubnet(taken, host []netip.Prefix) (netip.Prefix, error) {
	for x := 56; x < 256; x++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(x), 0}), 24)
		free := true
		for _, t := range append(append([]netip.Prefix(nil), taken...), host...) {
			if t.Overlaps(p) {
				free = false
				break
			}
		}
		if free {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: every subnet from 192.168.56.0/24 to 192.168.255.0/24 is taken; create the network with an explicit subnet", ErrFull)
}

func isNotEmpty(err error) bool {
	var le *os.LinkError
	return errors.As(err, &le) && (errors.Is(le.Err, fs.ErrExist) || le.Err.Error() == "directory not empty")
}

// Remove deletes a network's definition and tears its runtime down. It is
// refused, wrapping ErrInUse, while any allocation remains on it.
func (m *Manager) Remove(ctx context.Context, name string) error {
	if _, err := m.Get(name); err != nil {
		return err
	}
	lk, err := m.Lock(ctx, name)
	if err != nil {
		return err
	}
	defer lk.Unlock()
	allocs, err := m.Allocations(name)
	if err != nil {
		return err
	}
	if len(allocs) > 0 {
		var machines []string
		seen := map[string]bool{}
		for _, a := range allocs {
			if !seen[a.Machine] {
				seen[a.Machine] = true
				machines = append(machines, a.Machine)
			}
		}
		return fmt.Errorf("%w: network %q is used by %d machine(s): %v; destroy them (or change their hardware) first", ErrInUse, name, len(machines), machines)
	}
	n, err := m.Get(name)
	if err != nil {
		return err
	}
	if err := m.Down(ctx, n); err != nil {
		return fmt.Errorf("remove network %s: %w", name, err)
	}
	trash, err := os.MkdirTemp(m.dir, ".removing-"+name+"-")
	if err != nil {
		return fmt.Errorf("remove network %s: %w", name, err)
	}
	if err := os.Rename(m.Path(name), filepath.Join(trash, name)); err != nil {
		os.Remove(trash)
		return fmt.Errorf("remove network %s: %w", name, err)
	}
	return os.RemoveAll(trash)
}

// Sweep removes the hidden directories that a create or remove cut short by
// a crash left in the networks directory, and returns their paths. It does
// nothing while another process holds the directory (a create or remove in
// flight).
func (m *Manager) Sweep(fix bool) ([]string, error) {
	lk, ok, err := store.TryLockDir(m.dir)
	if err != nil || !ok {
		return nil, err
	}
	defer lk.Unlock()
	return sweepHidden(m.dir, fix)
}

// sweepHidden lists (and with fix removes) the hidden entries of dir.
func sweepHidden(dir string, fix bool) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("sweep %s: %w", dir, err)
	}
	var out []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if fix {
			if err := os.RemoveAll(p); err != nil {
				return out, fmt.Errorf("sweep %s: %w", p, err)
			}
		}
		out = append(out, p)
	}
	return out, nil
}
