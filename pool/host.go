package pool

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/store"
)

// HostConfig describes a host joining a pool.
type HostConfig struct {
	// ID names the host in the pool (default: its host name).
	ID string
	// URL is the host's API as the pool's clients reach it: an http(s)
	// URL of `vmfest serve --listen`, or unix:///path for a pool whose
	// clients all run on this host.
	URL string
	// Token is the host's bearer token; only its fingerprint is
	// published.
	Token string
	// Server is the host's own server (its Local), read for the record
	// and reconciled against the pool's reservations.
	Server vmfest.Server
	// Home is the host's state directory, whose free space is published.
	Home string
	// Accel is the accelerator the host runs machines with (kvm, tcg).
	Accel string
	// Prefix is the pool's key prefix (default DefaultPrefix).
	Prefix string
	// TTL is the lease of the host's record (default DefaultTTL).
	TTL time.Duration
	// Refresh is how often the record is rewritten and the host's
	// machines reconciled with the pool (default TTL/2).
	Refresh time.Duration
	// StaleReservation bounds a reservation of an unfinished create
	// (default DefaultStaleReservation).
	StaleReservation time.Duration
	// Logger receives what the host does in the pool (default: discard).
	Logger *slog.Logger
}

// Host is a host's membership of a pool: its record under a lease it
// keeps alive, and the reconciliation of its machines with the pool's
// reservations. Close and Leave are safe to call more than once.
type Host struct {
	cli    *clientv3.Client
	cfg    HostConfig
	keys   keys
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	lease clientv3.LeaseID
}

// Join registers the host in the pool (its record under a fresh lease,
// its machines' names reserved) and keeps it registered until Close or
// Leave: the lease is renewed, the record and the reservations refreshed
// every cfg.Refresh, and a lease that ran out (etcd out of reach for
// longer than the TTL) is replaced by a new registration once etcd
// answers again. ctx bounds the first registration only.
func Join(ctx context.Context, cli *clientv3.Client, cfg HostConfig) (*Host, error) {
	if cfg.ID == "" {
		name, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("pool host id: %w", err)
		}
		cfg.ID = name
	}
	if err := store.ValidateName("host", cfg.ID); err != nil {
		return nil, fmt.Errorf("%w: %w", vmfest.ErrInvalid, err)
	}
	if cfg.URL == "" {
		return nil, fmt.Errorf("%w: pool host %s: give the URL other hosts and clients reach its API at", vmfest.ErrInvalid, cfg.ID)
	}
	if cfg.Server == nil {
		return nil, errors.New("pool host: no server")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < 2*time.Second {
		return nil, fmt.Errorf("%w: pool lease TTL %s: give 2s or more", vmfest.ErrInvalid, cfg.TTL)
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = cfg.TTL / 2
	}
	if cfg.StaleReservation <= 0 {
		cfg.StaleReservation = DefaultStaleReservation
	}
	h := &Host{cli: cli, cfg: cfg, keys: newKeys(cfg.Prefix), log: cfg.Logger, done: make(chan struct{})}
	if h.log == nil {
		h.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ka, err := h.register(ctx)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go h.run(runCtx, ka)
	return h, nil
}

// ID is the host's id in the pool.
func (h *Host) ID() string { return h.cfg.ID }

// Close stops renewing the lease and leaves the record to run out within
// the TTL, as a host that crashed would; its reservations stay.
func (h *Host) Close() {
	h.cancel()
	<-h.done
}

// Leave is Close, then removes the host's record at once (revokes its
// lease): its machines read Unreachable from now.
func (h *Host) Leave(ctx context.Context) error {
	h.Close()
	h.mu.Lock()
	id := h.lease
	h.mu.Unlock()
	if _, err := h.cli.Revoke(ctx, id); err != nil {
		return fmt.Errorf("pool host %s: revoke its lease: %w", h.cfg.ID, err)
	}
	return nil
}

// register grants a lease, writes the record under it, reconciles, and
// starts renewing the lease.
func (h *Host) register(ctx context.Context) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	lease, err := h.cli.Grant(ctx, int64((h.cfg.TTL+time.Second-1)/time.Second))
	if err != nil {
		return nil, fmt.Errorf("pool host %s: grant a lease: %w", h.cfg.ID, err)
	}
	h.mu.Lock()
	h.lease = lease.ID
	h.mu.Unlock()
	if err := h.claim(ctx, lease.ID); err != nil {
		h.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		return nil, err
	}
	if err := h.refresh(ctx); err != nil {
		h.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		return nil, err
	}
	// The keep-alive lives as long as the Host, not as ctx.
	kaCtx, cancel := context.WithCancel(context.Background())
	ka, err := h.cli.KeepAlive(kaCtx, lease.ID)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("pool host %s: keep its lease alive: %w", h.cfg.ID, err)
	}
	go func() { <-h.done; cancel() }()
	h.log.Info("joined pool", "host", h.cfg.ID, "url", h.cfg.URL, "lease", fmt.Sprintf("%x", lease.ID))
	return ka, nil
}

func (h *Host) run(ctx context.Context, ka <-chan *clientv3.LeaseKeepAliveResponse) {
	defer close(h.done)
	tick := time.NewTicker(h.cfg.Refresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ka:
			if ok {
				continue
			}
			h.log.Warn("pool lease lost; registering again", "host", h.cfg.ID)
			ka = h.reregister(ctx)
			if ka == nil {
				return
			}
		case <-tick.C:
			rctx, cancel := context.WithTimeout(ctx, h.cfg.TTL)
			if err := h.refresh(rctx); err != nil && ctx.Err() == nil {
				h.log.Warn("pool refresh", "host", h.cfg.ID, "err", err)
			}
			cancel()
		}
	}
}

// reregister retries register until it works or ctx ends (then nil).
func (h *Host) reregister(ctx context.Context) <-chan *clientv3.LeaseKeepAliveResponse {
	wait := 200 * time.Millisecond
	for {
		rctx, cancel := context.WithTimeout(ctx, h.cfg.TTL)
		ka, err := h.register(rctx)
		cancel()
		if err == nil {
			return ka
		}
		h.log.Warn("pool registration", "host", h.cfg.ID, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, h.cfg.TTL)
	}
}

// claim takes the host's id in the pool for lease: it waits, bounded by
// ctx, while another lease holds the id (this host's previous run, killed
// less than a TTL ago, or another host given the same id).
func (h *Host) claim(ctx context.Context, lease clientv3.LeaseID) error {
	key := h.keys.host(h.cfg.ID)
	first, err := json.Marshal(h.capacity(ctx))
	if err != nil {
		return err
	}
	held := func() error {
		return fmt.Errorf("%w: pool host id %s is held by a live lease (another host with this id, or this host's previous run less than its TTL ago): %w", vmfest.ErrExists, h.cfg.ID, ctx.Err())
	}
	for waited := false; ; waited = true {
		resp, err := h.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(first), clientv3.WithLease(lease))).
			Else(clientv3.OpGet(key)).
			Commit()
		if err != nil {
			if waited && ctx.Err() != nil {
				return held()
			}
			return fmt.Errorf("pool host %s: claim its id: %w", h.cfg.ID, err)
		}
		if resp.Succeeded {
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 1 && clientv3.LeaseID(kvs[0].Lease) == lease {
			return nil
		}
		h.log.Info("pool: another lease holds this host id; waiting for it to run out", "host", h.cfg.ID)
		select {
		case <-ctx.Done():
			return held()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// refresh reconciles the host's machines with the pool and rewrites its
// record.
func (h *Host) refresh(ctx context.Context) error {
	rec, err := h.reconcile(ctx)
	if err != nil {
		return err
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	h.mu.Lock()
	lease := h.lease
	h.mu.Unlock()
	if _, err := h.cli.Put(ctx, h.keys.host(h.cfg.ID), string(data), clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("pool host %s: write its record: %w", h.cfg.ID, err)
	}
	return nil
}

// reconcile makes the pool's reservations agree with the host's machines
// and returns the host's record:
//   - a machine of the host with no reservation gets one (Created);
//   - a Creating reservation of a machine the host has becomes Created;
//   - a reservation for this host of a machine it does not have is
//     released when it is Created (the machine was destroyed on the host
//     directly, or lost) or Creating for longer than StaleReservation
//     (its client died half-way);
//   - a machine whose name is reserved for another host is reported in
//     the record's Conflicts, and left alone.
//
// The reservations are read before the machines are listed, and each
// change is a transaction on the revision read, so a create or destroy
// under way through the pool is never undone.
func (h *Host) reconcile(ctx context.Context) (HostRecord, error) {
	res, err := h.cli.Get(ctx, h.keys.machines(), clientv3.WithPrefix())
	if err != nil {
		return HostRecord{}, fmt.Errorf("pool host %s: read the reservations: %w", h.cfg.ID, err)
	}
	ms, err := h.cfg.Server.Machines(ctx)
	if err != nil {
		return HostRecord{}, fmt.Errorf("pool host %s: list its machines: %w", h.cfg.ID, err)
	}
	have := make(map[string]vmfest.Machine, len(ms))
	for _, m := range ms {
		have[m.Name()] = m
	}
	rec := h.capacity(ctx)
	rec.Machines = len(ms)
	seen := map[string]bool{}
	for _, kv := range res.Kvs {
		name := strings.TrimPrefix(string(kv.Key), h.keys.machines())
		r, err := decode[Reservation]("reservation", kv.Key, kv.Value)
		if err != nil {
			h.log.Warn("pool", "err", err)
			continue
		}
		seen[name] = true
		_, ok := have[name]
		switch {
		case r.Host != h.cfg.ID:
			if ok {
				rec.Conflicts = append(rec.Conflicts, name)
			}
		case ok && r.State == Creating:
			// The pool's client finishes this unless it died; the host
			// marks it once it is older than a create takes.
			if time.Since(r.Since) > time.Minute {
				r.State = Created
				h.swap(ctx, name, kv.ModRevision, &r)
			}
		case !ok && (r.State == Created || time.Since(r.Since) > h.cfg.StaleReservation):
			h.log.Info("pool: releasing the name of a machine this host does not have", "machine", name, "state", r.State)
			h.swap(ctx, name, kv.ModRevision, nil)
		}
	}
	for name, m := range have {
		if seen[name] {
			continue
		}
		r := Reservation{Host: h.cfg.ID, State: Created, Since: time.Now().UTC()}
		if info, err := m.Info(ctx); err == nil {
			r.MemoryMiB = int64(info.HardwareSpec.MemorySize)
		}
		if !h.swap(ctx, name, 0, &r) {
			rec.Conflicts = append(rec.Conflicts, name)
		}
	}
	sort.Strings(rec.Conflicts)
	rec.Running = h.running(ctx, ms)
	models, err := h.cfg.Server.Models(ctx)
	if err != nil {
		return HostRecord{}, fmt.Errorf("pool host %s: list its models: %w", h.cfg.ID, err)
	}
	for _, m := range models {
		rec.Models = append(rec.Models, m.ID)
	}
	return rec, nil
}

// swap replaces (r != nil) or deletes (r == nil) the reservation of name
// if it is still at revision rev (0: if it does not exist); it reports
// whether it did.
func (h *Host) swap(ctx context.Context, name string, rev int64, r *Reservation) bool {
	key := h.keys.machine(name)
	cond := clientv3.Compare(clientv3.ModRevision(key), "=", rev)
	if rev == 0 {
		cond = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	op := clientv3.OpDelete(key)
	if r != nil {
		data, _ := json.Marshal(r)
		op = clientv3.OpPut(key, string(data))
	}
	resp, err := h.cli.Txn(ctx).If(cond).Then(op).Commit()
	if err != nil {
		h.log.Warn("pool reservation", "machine", name, "err", err)
		return false
	}
	return resp.Succeeded
}

// running counts the running machines, a few states at a time.
func (h *Host) running(ctx context.Context, ms []vmfest.Machine) int {
	var n int
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, m := range ms {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if st, err := m.State(ctx); err == nil && st == vmfest.Running {
				mu.Lock()
				n++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return n
}

// capacity reads the host's CPUs, memory and free disk.
func (h *Host) capacity(ctx context.Context) HostRecord {
	rec := HostRecord{
		ID:          h.cfg.ID,
		URL:         h.cfg.URL,
		TokenSHA256: TokenFingerprint(h.cfg.Token),
		CPUs:        runtime.NumCPU(),
		Accel:       h.cfg.Accel,
		Updated:     time.Now().UTC(),
	}
	if total, avail, err := meminfo(); err == nil {
		rec.MemoryMiB, rec.AvailableMiB = total, avail
	} else {
		h.log.Debug("pool: memory", "err", err)
	}
	if h.cfg.Home != "" {
		var st unix.Statfs_t
		if err := unix.Statfs(h.cfg.Home, &st); err == nil {
			rec.FreeDisk = int64(st.Bavail) * int64(st.Bsize)
		}
	}
	return rec
}

// meminfo returns MemTotal and MemAvailable in MiB.
func meminfo() (total, avail int64, err error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "MemTotal":
			total = n / 1024
		case "MemAvailable":
			avail = n / 1024
		}
	}
	return total, avail, sc.Err()
}
