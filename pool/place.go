package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/spec"
)

// candidate is a host the policy may place a machine on.
type candidate struct {
	HostRecord
	committed int64 // MiB of the machines reserved on it
	machines  int
}

// place chooses the host of a new machine from image, by the pool's
// policy (docs/POOL.md):
//  1. the pinned host (WithHost) if any; else the live hosts that are not
//     draining;
//  2. of those, for an image model, the hosts that hold it;
//  3. the one with the most memory not yet committed to its machines
//     (its RAM less the memory-size of every machine reserved on it),
//     then the fewest machines, then the smallest id.
func (p *Pool) place(v view, image vmfest.Image) (HostRecord, error) {
	if p.o.pin != "" {
		h, ok := v.hosts[p.o.pin]
		switch {
		case !ok:
			return HostRecord{}, fmt.Errorf("%w: pool host %s is not in the pool (no live record)", vmfest.ErrUnavailable, p.o.pin)
		case v.drains[p.o.pin]:
			return HostRecord{}, fmt.Errorf("%w: pool host %s is draining: it takes no new machines (vmfest pool drain --undo %s)", vmfest.ErrUnavailable, p.o.pin, p.o.pin)
		case image.Model != "" && !slices.Contains(h.Models, image.Model):
			return HostRecord{}, fmt.Errorf("%w: image model %q on pool host %s", vmfest.ErrNotFound, image.Model, p.o.pin)
		}
		return h, nil
	}
	cands := map[string]*candidate{}
	var open []string
	for id, h := range v.hosts {
		if v.drains[id] {
			continue
		}
		open = append(open, id)
		if image.Model != "" && !slices.Contains(h.Models, image.Model) {
			continue
		}
		cands[id] = &candidate{HostRecord: h}
	}
	if len(cands) == 0 {
		sort.Strings(open)
		switch {
		case len(open) == 0:
			return HostRecord{}, fmt.Errorf("%w: pool: no host takes new machines (%d live, the others draining)", vmfest.ErrUnavailable, len(v.hosts))
		default:
			return HostRecord{}, fmt.Errorf("%w: image model %q is on no pool host that takes new machines (%v): install it with vmfest --pool ... setup-model: %w", vmfest.ErrNotFound, image.Model, open, errNoModelHost)
		}
	}
	for _, r := range v.res {
		if c, ok := cands[r.Host]; ok {
			c.committed += r.MemoryMiB
			c.machines++
		}
	}
	list := make([]*candidate, 0, len(cands))
	for _, c := range cands {
		list = append(list, c)
	}
	sort.Slice(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if fa, fb := a.MemoryMiB-a.committed, b.MemoryMiB-b.committed; fa != fb {
			return fa > fb
		}
		if a.machines != b.machines {
			return a.machines < b.machines
		}
		return a.ID < b.ID
	})
	return list[0].HostRecord, nil
}

// errNoModelHost is wrapped by place's error when hosts take machines
// but none of them holds the image model.
var errNoModelHost = errors.New("no host holds the model")

// installModel installs image model id on the host the policy chooses
// among those that take machines, from the source URL it was installed
// from on a host that holds it (a draining one too), with its digest and
// metadata; it returns that host, or notFound when no host holds the
// model or its source is not an http(s) URL (a path is a path on its
// host only).
func (p *Pool) installModel(ctx context.Context, v view, id string, notFound error) (HostRecord, error) {
	var from *HostRecord
	for _, h := range v.sortedHosts() {
		if slices.Contains(h.Models, id) {
			from = &h
			break
		}
	}
	if from == nil {
		return HostRecord{}, notFound
	}
	fr, err := p.remote(*from)
	if err != nil {
		return HostRecord{}, err
	}
	mi, err := fr.Model(ctx, id)
	if err != nil {
		return HostRecord{}, fmt.Errorf("pool host %s: %w", from.ID, err)
	}
	if u, err := url.Parse(mi.Source); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return HostRecord{}, fmt.Errorf("%w (it is on draining host %s, installed from %q, not a URL another host can fetch)", notFound, from.ID, mi.Source)
	}
	to, err := p.place(v, vmfest.Image{})
	if err != nil {
		return HostRecord{}, err
	}
	tr, err := p.remote(to)
	if err != nil {
		return HostRecord{}, err
	}
	// The digest of what the first host downloaded: every host gets the
	// same bytes.
	meta := mi.Spec
	meta.Location = "" // the source host's file; the target makes its own
	opts := vmfest.SetupOptions{ID: id, Meta: &meta, SHA256: mi.SHA256}
	p.log.Info("pool: installing an image model on the chosen host", "model", id, "host", to.ID, "source", mi.Source)
	if _, err := tr.SetupModel(ctx, mi.Source, opts); err != nil && !errors.Is(err, vmfest.ErrExists) {
		return HostRecord{}, fmt.Errorf("pool host %s: install image model %s from %s: %w", to.ID, id, mi.Source, err)
	}
	return to, nil
}

// memoryOf returns the memory-size (MiB) of hardware, asking host r for
// a hardware model; 0 when it cannot tell (the create then reports why).
func memoryOf(ctx context.Context, r vmfest.Server, hw vmfest.Hardware) int64 {
	if hw.Spec != nil {
		return int64(hw.Spec.WithDefaults().MemorySize)
	}
	name := hw.Model
	if name == "" {
		return spec.DefaultMemorySize
	}
	h, err := r.HardwareModel(ctx, name)
	if err != nil {
		return 0
	}
	return int64(h.MemorySize)
}

// reserve claims name for host in one transaction that succeeds only if
// no one holds it; it returns the reservation's revision, or an error
// wrapping vmfest.ErrExists.
func (p *Pool) reserve(ctx context.Context, name, host string, mem int64) (int64, error) {
	key := p.keys.machine(name)
	data, _ := json.Marshal(Reservation{Host: host, State: Creating, MemoryMiB: mem, Since: time.Now().UTC()})
	resp, err := p.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(data))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return 0, etcdError("reserve machine name "+name, err)
	}
	if !resp.Succeeded {
		owner := "another host"
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			if r, err := decode[Reservation]("reservation", kvs[0].Key, kvs[0].Value); err == nil {
				owner = "pool host " + r.Host
			}
		}
		return 0, fmt.Errorf("%w: machine %q (on %s)", vmfest.ErrExists, name, owner)
	}
	return resp.Header.Revision, nil
}

// settle ends a reservation made at rev: marks it Created (ok) or
// releases it, only if no one changed it since. It runs after the
// caller's context may have ended.
func (p *Pool) settle(ctx context.Context, name string, rev int64, ok bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	key := p.keys.machine(name)
	cond := clientv3.Compare(clientv3.ModRevision(key), "=", rev)
	op := clientv3.OpDelete(key)
	if ok {
		get, err := p.cli.Get(ctx, key)
		if err != nil || len(get.Kvs) != 1 {
			return
		}
		r, err := decode[Reservation]("reservation", get.Kvs[0].Key, get.Kvs[0].Value)
		if err != nil {
			return
		}
		r.State = Created
		data, _ := json.Marshal(r)
		op = clientv3.OpPut(key, string(data))
	}
	if _, err := p.cli.Txn(ctx).If(cond).Then(op).Commit(); err != nil {
		// The owning host's reconciliation settles it (docs/POOL.md).
		p.log.Warn("pool: settle reservation", "machine", name, "err", err)
	}
}

// release drops name's reservation if it is held for host.
func (p *Pool) release(ctx context.Context, name, host string) error {
	key := p.keys.machine(name)
	get, err := p.cli.Get(ctx, key)
	if err != nil {
		return etcdError("release machine name "+name, err)
	}
	if len(get.Kvs) != 1 {
		return nil
	}
	r, err := decode[Reservation]("reservation", get.Kvs[0].Key, get.Kvs[0].Value)
	if err != nil || r.Host != host {
		return nil
	}
	_, err = p.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", get.Kvs[0].ModRevision)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return etcdError("release machine name "+name, err)
	}
	return nil
}
