package pool

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmfest/vmfest"
)

// HostStatus is a host as `vmfest pool hosts` shows it.
type HostStatus struct {
	HostRecord
	// Live: the host's record is there (its lease is kept alive).
	Live bool `json:"live"`
	// Answers: its API answered a listing within the host timeout.
	Answers bool `json:"answers"`
	// Error is why it did not.
	Error    string `json:"error,omitempty"`
	Draining bool   `json:"draining"`
	// Reserved counts the machine names the pool holds for it, and
	// CommittedMiB their memory.
	Reserved     int   `json:"reserved"`
	CommittedMiB int64 `json:"committed-mib"`
	// Latency is how long its API took to answer.
	Latency time.Duration `json:"latency-ns,omitempty"`
}

// Hosts reports every host of the pool: the live ones, and those gone
// that still own machine names. Each live host's API is asked at once,
// bounded by the host timeout.
func (p *Pool) Hosts(ctx context.Context) ([]HostStatus, error) {
	v, err := p.read(ctx, true)
	if err != nil {
		return nil, err
	}
	st := map[string]*HostStatus{}
	for id, h := range v.hosts {
		st[id] = &HostStatus{HostRecord: h, Live: true}
	}
	for _, r := range v.res {
		s, ok := st[r.Host]
		if !ok {
			s = &HostStatus{HostRecord: HostRecord{ID: r.Host}}
			st[r.Host] = s
		}
		s.Reserved++
		s.CommittedMiB += r.MemoryMiB
	}
	for id := range v.drains {
		if s, ok := st[id]; ok {
			s.Draining = true
		}
	}
	var wg sync.WaitGroup
	for _, s := range st {
		if !s.Live {
			s.Error = "gone: its lease ran out"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := p.remote(s.HostRecord)
			if err == nil {
				hctx, cancel := context.WithTimeout(ctx, p.o.hostTimeout)
				start := time.Now()
				_, err = r.HardwareModels(hctx)
				s.Latency = time.Since(start)
				cancel()
			}
			if err != nil {
				s.Error = err.Error()
				return
			}
			s.Answers = true
		}()
	}
	wg.Wait()
	out := make([]HostStatus, 0, len(st))
	for _, s := range st {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Drain stops (on) or resumes (!on) new placements on host id; its
// machines stay and keep working. A drain outlives the host's lease: it
// is the operator's, not the host's.
func (p *Pool) Drain(ctx context.Context, id string, on bool) error {
	if err := checkName("host", id); err != nil {
		return err
	}
	key := p.keys.drain(id)
	var err error
	if on {
		v, rerr := p.read(ctx, true)
		if rerr != nil {
			return rerr
		}
		known := false
		if _, ok := v.hosts[id]; ok {
			known = true
		}
		for _, r := range v.res {
			known = known || r.Host == id
		}
		if !known {
			return fmt.Errorf("%w: pool host %s (no record, no machine)", vmfest.ErrNotFound, id)
		}
		_, err = p.cli.Put(ctx, key, time.Now().UTC().Format(time.RFC3339))
	} else {
		_, err = p.cli.Delete(ctx, key)
	}
	if err != nil {
		return etcdError("drain host "+id, err)
	}
	return nil
}

// Forget releases every machine name the pool holds for host id, a host
// that is gone for good (its machines with it). A live host is refused.
func (p *Pool) Forget(ctx context.Context, id string) (int, error) {
	v, err := p.read(ctx, true)
	if err != nil {
		return 0, err
	}
	if _, ok := v.hosts[id]; ok {
		return 0, fmt.Errorf("%w: pool host %s is live: drain it and destroy its machines instead", vmfest.ErrWrongState, id)
	}
	n := 0
	for name, r := range v.res {
		if r.Host != id {
			continue
		}
		key := p.keys.machine(name)
		resp, err := p.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", r.rev)).Then(clientv3.OpDelete(key)).Commit()
		if err != nil {
			return n, etcdError("forget host "+id, err)
		}
		if resp.Succeeded {
			n++
		}
	}
	if _, err := p.cli.Delete(ctx, p.keys.drain(id)); err != nil {
		return n, etcdError("forget host "+id, err)
	}
	return n, nil
}
