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

	"github.com/vmfest/vmfest/store"
)

// Allocations returns the network's allocations, sorted by address (then
// machine and slot).
func (m *Manager) Allocations(name string) ([]Allocation, error) {
	return readAllocations(m.Path(name))
}

func readAllocations(dir string) ([]Allocation, error) {
	data, err := os.ReadFile(filepath.Join(dir, AllocationsFile))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(dir); serr != nil {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, filepath.Base(dir))
		}
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("network %s: %w", filepath.Base(dir), err)
	}
	var out []Allocation
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("network %s: %s is corrupt: %w", filepath.Base(dir), AllocationsFile, err)
	}
	return out, nil
}

// writeAllocations replaces the allocations file of the network directory
// dir, durably (the directory is synced).
func writeAllocations(dir string, allocs []Allocation) error {
	if err := replaceAllocations(dir, allocs); err != nil {
		return err
	}
	return store.SyncDir(dir)
}

// replaceAllocations replaces the allocations file of dir, its content
// synced but not the directory (see store.ReplaceFile): the caller holds
// the network's lock and syncs the directory once it has let go.
//
// That keeps one of the two fsyncs of a change out of the lock, safely:
// every allocations file renamed into place has its content on disk
// first, and each change starts from the file the previous one left, so
// whichever rename the directory's sync makes durable carries this
// change too (only the owner's own release takes an allocation out).
func replaceAllocations(dir string, allocs []Allocation) error {
	sort.Slice(allocs, func(i, j int) bool {
		a, b := allocs[i], allocs[j]
		if a.IP != b.IP {
			ai, _ := netip.ParseAddr(a.IP)
			bi, _ := netip.ParseAddr(b.IP)
			return ai.Less(bi)
		}
		if a.Machine != b.Machine {
			return a.Machine < b.Machine
		}
		return a.Slot < b.Slot
	})
	if allocs == nil {
		allocs = []Allocation{}
	}
	data, err := json.MarshalIndent(allocs, "", "  ")
	if err != nil {
		return err
	}
	return store.ReplaceFile(filepath.Join(dir, AllocationsFile), append(data, '\n'), 0o644)
}

// Allocate records a machine NIC on the network and, on a host-only
// network, reserves the lowest free address for it (the host's .1, the
// network and broadcast addresses are never given). a.IP is ignored. It
// holds the network's lock, so concurrent allocations (in any process)
// never hand one address out twice; the allocation is on disk when it
// returns. The reservation is passed on to a running dnsmasq at once.
func (m *Manager) Allocate(ctx context.Context, name string, a Allocation) (Allocation, error) {
	n, err := m.Get(name)
	if err != nil {
		return Allocation{}, err
	}
	a, err = m.allocate(ctx, n, a)
	if err != nil {
		return Allocation{}, err
	}
	if err := store.SyncDir(m.Path(name)); err != nil {
		return Allocation{}, fmt.Errorf("network %s: %w", name, err)
	}
	return a, nil
}

// allocate is Allocate's decision and its write, under the network's lock
// (held for no more than that: the directory is synced after).
func (m *Manager) allocate(ctx context.Context, n Network, a Allocation) (Allocation, error) {
	lk, err := m.Lock(ctx, n.Name)
	if err != nil {
		return Allocation{}, err
	}
	defer lk.Unlock()
	allocs, err := m.Allocations(n.Name)
	if err != nil {
		return Allocation{}, err
	}
	for _, o := range allocs {
		if o.Owner == a.Owner && o.Slot == a.Slot {
			return o, nil // already done (a retried create)
		}
	}
	a.IP = ""
	if n.Kind == KindHostOnly {
		ip, err := freeAddress(n, allocs)
		if err != nil {
			return Allocation{}, err
		}
		a.IP = ip.String()
	}
	allocs = append(allocs, a)
	if err := replaceAllocations(m.Path(n.Name), allocs); err != nil {
		return Allocation{}, fmt.Errorf("network %s: %w", n.Name, err)
	}
	if n.Kind == KindHostOnly {
		if err := m.reloadHosts(ctx, n, allocs); err != nil {
			return Allocation{}, err
		}
	}
	return a, nil
}

// freeAddress returns the lowest address of the subnet, past the host's,
// that no allocation holds.
func freeAddress(n Network, allocs []Allocation) (netip.Addr, error) {
	p, err := n.Prefix()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("network %s: subnet %q: %w", n.Name, n.Subnet, err)
	}
	used := map[netip.Addr]bool{}
	for _, a := range allocs {
		if ip, err := netip.ParseAddr(a.IP); err == nil {
			used[ip] = true
		}
	}
	host := p.Addr().Next()
	for ip := host.Next(); p.Contains(ip) && p.Contains(ip.Next()); ip = ip.Next() {
		if !used[ip] {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w on network %s (%s): all %d addresses are reserved", ErrFull, n.Name, n.Subnet, len(used))
}

// Release frees every allocation owner holds on every network and returns
// the names of the networks it touched. Releasing what is not held is not
// an error.
func (m *Manager) Release(ctx context.Context, owner string) ([]string, error) {
	nets, err := m.List()
	if err != nil {
		return nil, err
	}
	var touched []string
	var errs []error
	for _, n := range nets {
		allocs, err := m.Allocations(n.Name)
		if err != nil || !holds(allocs, owner) {
			continue
		}
		if err := m.release(ctx, n, owner); err != nil {
			errs = append(errs, err)
			continue
		}
		touched = append(touched, n.Name)
	}
	return touched, errors.Join(errs...)
}

func holds(allocs []Allocation, owner string) bool {
	for _, a := range allocs {
		if a.Owner == owner {
			return true
		}
	}
	return false
}

func (m *Manager) release(ctx context.Context, n Network, owner string) error {
	if err := m.releaseLocked(ctx, n, owner); err != nil {
		return err
	}
	if err := store.SyncDir(m.Path(n.Name)); err != nil {
		return fmt.Errorf("network %s: %w", n.Name, err)
	}
	return nil
}

// releaseLocked is release under the network's lock; the caller syncs the
// directory after.
func (m *Manager) releaseLocked(ctx context.Context, n Network, owner string) error {
	lk, err := m.Lock(ctx, n.Name)
	if err != nil {
		return err
	}
	defer lk.Unlock()
	allocs, err := m.Allocations(n.Name)
	if err != nil {
		return err
	}
	kept := allocs[:0]
	for _, a := range allocs {
		if a.Owner != owner {
			kept = append(kept, a)
		}
	}
	if err := replaceAllocations(m.Path(n.Name), kept); err != nil {
		return fmt.Errorf("network %s: %w", n.Name, err)
	}
	if n.Kind == KindHostOnly {
		return m.reloadHosts(ctx, n, kept)
	}
	return nil
}

// dhcpHosts renders dnsmasq's reservations: one dhcp-host line per
// host-only allocation, MAC to address, with the machine's name as the
// host name.
func dhcpHosts(allocs []Allocation) []byte {
	var b strings.Builder
	for _, a := range allocs {
		if a.IP == "" {
			continue
		}
		fmt.Fprintf(&b, "dhcp-host=%s,%s,%s\n", strings.ToLower(a.MAC), a.IP, hostName(a.Machine))
	}
	return []byte(b.String())
}

// hostName makes a machine name a valid DHCP host name (letters, digits
// and '-').
func hostName(s string) string {
	out := []byte(s)
	for i, c := range out {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			out[i] = '-'
		}
	}
	return string(out)
}
