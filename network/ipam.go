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
// returns, and an Allocate that fails leaves nothing allocated unless it
// failed after the write (see Reserve, which releases the owner then). The
// reservation is passed on to a running dnsmasq at once.
//
// Concurrent calls on one Manager are committed together: the calls that
// arrive while one waits for the network's lock are decided, written and
// synced with it, in one write and one fsync (a group commit), each as if
// made on its own, in the order they arrived.
func (m *Manager) Allocate(ctx context.Context, name string, a Allocation) (Allocation, error) {
	n, err := m.Get(name)
	if err != nil {
		return Allocation{}, err
	}
	for {
		got, err := m.allocate(ctx, n, a)
		if errors.Is(err, errLeaderGone) {
			continue // the call that was to commit this one gave up first
		}
		return got, err
	}
}

// errLeaderGone tells the calls of a batch that its leader stopped waiting
// for the lock (its context ended) before it took the batch: they try
// again.
var errLeaderGone = errors.New("the batch's leader gave up")

// allocBatch is a group of concurrent Allocate calls on one network,
// committed by the first of them (the leader).
type allocBatch struct {
	reqs []Allocation
	// gone marks the requests withdrawn before the leader took the batch.
	gone []bool
	done chan struct{} // closed when out and errs are set
	out  []Allocation
	errs []error
}

// allocate joins the network's open batch, or opens one and commits it,
// and returns this call's result.
func (m *Manager) allocate(ctx context.Context, n Network, a Allocation) (Allocation, error) {
	m.mu.Lock()
	if m.open == nil {
		m.open = map[string]*allocBatch{}
	}
	b := m.open[n.Name]
	leader := b == nil
	if leader {
		b = &allocBatch{done: make(chan struct{})}
		m.open[n.Name] = b
	}
	i := len(b.reqs)
	b.reqs = append(b.reqs, a)
	b.gone = append(b.gone, false)
	m.mu.Unlock()

	if leader {
		m.commit(ctx, n, b)
		return b.out[i], b.errs[i]
	}
	select {
	case <-b.done:
		return b.out[i], b.errs[i]
	case <-ctx.Done():
	}
	m.mu.Lock()
	if m.open[n.Name] == b { // not taken yet: withdraw
		b.gone[i] = true
		m.mu.Unlock()
		return Allocation{}, ctx.Err()
	}
	m.mu.Unlock()
	// Taken: the leader holds the lock and is writing; its result stands.
	<-b.done
	return b.out[i], b.errs[i]
}

// commit is the leader's part: take the network's lock, close the batch
// to newcomers, decide each request in turn, write the allocations once,
// let go of the lock, sync the directory, and hand each call its result.
func (m *Manager) commit(ctx context.Context, n Network, b *allocBatch) {
	lk, lockErr := m.Lock(ctx, n.Name)
	m.mu.Lock()
	if m.open[n.Name] == b {
		delete(m.open, n.Name)
	}
	reqs := b.reqs
	gone := b.gone
	m.mu.Unlock()
	b.out = make([]Allocation, len(reqs))
	b.errs = make([]error, len(reqs))
	defer close(b.done)
	if lockErr != nil {
		for i := range reqs {
			b.errs[i] = errLeaderGone
		}
		b.errs[0] = lockErr
		return
	}
	// The lock is held: the rest is bounded work, done for every call of
	// the batch whatever becomes of the leader's context.
	wrote, err := m.decide(context.WithoutCancel(ctx), n, reqs, gone, b)
	lk.Unlock()
	if err == nil && wrote {
		if serr := store.SyncDir(m.Path(n.Name)); serr != nil {
			err = fmt.Errorf("network %s: %w", n.Name, serr)
		}
	}
	if err != nil {
		for i := range reqs {
			if b.errs[i] == nil {
				b.out[i], b.errs[i] = Allocation{}, err
			}
		}
	}
}

// decide gives each request of a batch its allocation (or its error) in
// b, writes the allocations when any is new and tells a running dnsmasq.
// The caller holds the network's lock. An error is the whole batch's.
func (m *Manager) decide(ctx context.Context, n Network, reqs []Allocation, gone []bool, b *allocBatch) (wrote bool, err error) {
	allocs, err := m.Allocations(n.Name)
	if err != nil {
		return false, err
	}
	added := false
	for i, a := range reqs {
		if gone[i] {
			b.errs[i] = context.Canceled // withdrawn: its caller has returned
			continue
		}
		got, isNew, err := allocateIn(n, &allocs, a)
		b.out[i], b.errs[i] = got, err
		added = added || isNew
	}
	if !added {
		return false, nil
	}
	if err := replaceAllocations(m.Path(n.Name), allocs); err != nil {
		return false, fmt.Errorf("network %s: %w", n.Name, err)
	}
	if n.Kind == KindHostOnly {
		if err := m.reloadHosts(ctx, n, allocs); err != nil {
			return true, err
		}
	}
	return true, nil
}

// allocateIn decides one allocation against allocs and appends it when it
// is new (isNew).
func allocateIn(n Network, allocs *[]Allocation, a Allocation) (got Allocation, isNew bool, err error) {
	for _, o := range *allocs {
		if o.Owner == a.Owner && o.Slot == a.Slot {
			return o, false, nil // already done (a retried create)
		}
	}
	a.IP = ""
	if n.Kind == KindHostOnly {
		ip, err := freeAddress(n, *allocs)
		if err != nil {
			return Allocation{}, false, err
		}
		a.IP = ip.String()
	}
	*allocs = append(*allocs, a)
	return a, true, nil
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
