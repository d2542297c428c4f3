package pool

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
)

// Models, hardware models, networks and volumes belong to each host (a
// network is a bridge on it, a volume a file in its state directory).
// The Pool routes them so (docs/POOL.md, "Per-host calls"):
//   - listings ask every live host (or the pinned one) at once and merge;
//   - one object by name comes from the first host (by id) that has it;
//   - changes go to the pinned host, else to every live host (models,
//     hardware models, networks, so that any host can take any machine);
//     a volume is made on the pinned host only.

// targets returns the pinned host, or every live host.
func (p *Pool) targets(ctx context.Context) ([]HostRecord, error) {
	v, err := p.read(ctx, false)
	if err != nil {
		return nil, err
	}
	if p.o.pin != "" {
		h, ok := v.hosts[p.o.pin]
		if !ok {
			return nil, fmt.Errorf("%w: pool host %s is not in the pool (no live record)", vmfest.ErrUnavailable, p.o.pin)
		}
		return []HostRecord{h}, nil
	}
	hs := v.sortedHosts()
	if len(hs) == 0 {
		return nil, fmt.Errorf("%w: pool: no live host", vmfest.ErrUnavailable)
	}
	return hs, nil
}

// each runs fn on every target host at once (each bounded by the host
// timeout when list) and returns each host's error, in targets' order.
func (p *Pool) each(ctx context.Context, list bool, fn func(ctx context.Context, i int, r *vmfest.Remote) error) ([]HostRecord, []error, error) {
	hs, err := p.targets(ctx)
	if err != nil {
		return nil, nil, err
	}
	errs := make([]error, len(hs))
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := p.remote(h)
			if err != nil {
				errs[i] = err
				return
			}
			hctx := ctx
			if list {
				var cancel context.CancelFunc
				hctx, cancel = context.WithTimeout(ctx, p.o.hostTimeout)
				defer cancel()
			}
			if err := fn(hctx, i, r); err != nil {
				errs[i] = fmt.Errorf("pool host %s: %w", h.ID, err)
			}
		}()
	}
	wg.Wait()
	return hs, errs, nil
}

// listed returns nil when at least one host answered a listing (the
// others are logged), else every host's error.
func (p *Pool) listed(what string, hs []HostRecord, errs []error) error {
	ok := false
	for i, err := range errs {
		if err == nil {
			ok = true
			continue
		}
		p.log.Warn("pool: a host did not answer", "list", what, "host", hs[i].ID, "err", err)
	}
	if ok {
		return nil
	}
	return errors.Join(errs...)
}

// first returns the answer of the first host (by id) that gives one
// without error, else the first error.
func first[T any](ctx context.Context, p *Pool, fn func(context.Context, *vmfest.Remote) (T, error)) (T, error) {
	results := map[int]T{}
	var mu sync.Mutex
	_, errs, err := p.each(ctx, true, func(ctx context.Context, i int, r *vmfest.Remote) error {
		v, err := fn(ctx, r)
		if err == nil {
			mu.Lock()
			results[i] = v
			mu.Unlock()
		}
		return err
	})
	var zero T
	if err != nil {
		return zero, err
	}
	for i := range errs {
		if v, ok := results[i]; ok {
			return v, nil
		}
	}
	// Prefer a host's "not found" over another's failure to answer.
	for _, e := range errs {
		if errors.Is(e, vmfest.ErrNotFound) {
			return zero, e
		}
	}
	return zero, errs[0]
}

// all runs a change on every target host; its error joins the hosts'.
func (p *Pool) all(ctx context.Context, fn func(context.Context, *vmfest.Remote) error) error {
	_, errs, err := p.each(ctx, false, func(ctx context.Context, _ int, r *vmfest.Remote) error { return fn(ctx, r) })
	if err != nil {
		return err
	}
	return errors.Join(errs...)
}

// HardwareModels implements vmfest.Server: the names any host has.
func (p *Pool) HardwareModels(ctx context.Context) ([]string, error) {
	var mu sync.Mutex
	set := map[string]bool{}
	hs, errs, err := p.each(ctx, true, func(ctx context.Context, _ int, r *vmfest.Remote) error {
		names, err := r.HardwareModels(ctx)
		mu.Lock()
		defer mu.Unlock()
		for _, n := range names {
			set[n] = true
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := p.listed("hardware models", hs, errs); err != nil {
		return nil, err
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// HardwareModel implements vmfest.Server.
func (p *Pool) HardwareModel(ctx context.Context, name string) (spec.Hardware, error) {
	return first(ctx, p, func(ctx context.Context, r *vmfest.Remote) (spec.Hardware, error) { return r.HardwareModel(ctx, name) })
}

// AddHardwareModel implements vmfest.Server, on every live host (or the
// pinned one).
func (p *Pool) AddHardwareModel(ctx context.Context, name string, h spec.Hardware) error {
	return p.all(ctx, func(ctx context.Context, r *vmfest.Remote) error { return r.AddHardwareModel(ctx, name, h) })
}

// RemoveHardwareModel implements vmfest.Server, on every live host (or
// the pinned one).
func (p *Pool) RemoveHardwareModel(ctx context.Context, name string) error {
	return p.all(ctx, func(ctx context.Context, r *vmfest.Remote) error { return r.RemoveHardwareModel(ctx, name) })
}

// SetupModel implements vmfest.Server: the model is installed on every
// live host at once (or the pinned one), each fetching source itself (a
// path is a path on each host); progress is the first host's.
func (p *Pool) SetupModel(ctx context.Context, source string, opts vmfest.SetupOptions) (model.ImageModel, error) {
	var mu sync.Mutex
	var got *model.ImageModel
	_, errs, err := p.each(ctx, false, func(ctx context.Context, i int, r *vmfest.Remote) error {
		o := opts
		if i > 0 {
			o.Progress = nil
		}
		m, err := r.SetupModel(ctx, source, o)
		if err == nil {
			mu.Lock()
			if got == nil {
				got = &m
			}
			mu.Unlock()
		}
		return err
	})
	if err != nil {
		return model.ImageModel{}, err
	}
	if err := errors.Join(errs...); err != nil {
		return model.ImageModel{}, err
	}
	return *got, nil
}

// Models implements vmfest.Server: the models any host holds, by id (the
// first host's record of each).
func (p *Pool) Models(ctx context.Context) ([]model.ImageModel, error) {
	lists := map[int][]model.ImageModel{}
	var mu sync.Mutex
	hs, errs, err := p.each(ctx, true, func(ctx context.Context, i int, r *vmfest.Remote) error {
		ms, err := r.Models(ctx)
		mu.Lock()
		lists[i] = ms
		mu.Unlock()
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := p.listed("models", hs, errs); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []model.ImageModel
	for i := range hs {
		for _, m := range lists[i] {
			if !seen[m.ID] {
				seen[m.ID] = true
				out = append(out, m)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Model implements vmfest.Server.
func (p *Pool) Model(ctx context.Context, id string) (model.ImageModel, error) {
	return first(ctx, p, func(ctx context.Context, r *vmfest.Remote) (model.ImageModel, error) { return r.Model(ctx, id) })
}

// RemoveModel implements vmfest.Server, on every live host (or the
// pinned one) that holds it.
func (p *Pool) RemoveModel(ctx context.Context, id string) error {
	return p.all(ctx, func(ctx context.Context, r *vmfest.Remote) error {
		if err := r.RemoveModel(ctx, id); err != nil && !errors.Is(err, vmfest.ErrNotFound) {
			return err
		}
		return nil
	})
}

// Networks implements vmfest.Server: each host's networks, one entry per
// name, its machines those of every host.
func (p *Pool) Networks(ctx context.Context) ([]vmfest.Network, error) {
	lists := map[int][]vmfest.Network{}
	var mu sync.Mutex
	hs, errs, err := p.each(ctx, true, func(ctx context.Context, i int, r *vmfest.Remote) error {
		ns, err := r.Networks(ctx)
		mu.Lock()
		lists[i] = ns
		mu.Unlock()
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := p.listed("networks", hs, errs); err != nil {
		return nil, err
	}
	byName := map[string]*vmfest.Network{}
	var out []*vmfest.Network
	for i := range hs {
		for _, n := range lists[i] {
			if have, ok := byName[n.Name]; ok {
				have.Machines = append(have.Machines, n.Machines...)
				continue
			}
			c := n
			byName[n.Name] = &c
			out = append(out, &c)
		}
	}
	res := make([]vmfest.Network, len(out))
	for i, n := range out {
		sort.Strings(n.Machines)
		res[i] = *n
	}
	sort.Slice(res, func(i, j int) bool { return res[i].Name < res[j].Name })
	return res, nil
}

// CreateNetwork implements vmfest.Server, on every live host (or the
// pinned one): each gets its own bridge of that name.
func (p *Pool) CreateNetwork(ctx context.Context, n vmfest.NetworkSpec) (vmfest.Network, error) {
	var mu sync.Mutex
	var got *vmfest.Network
	_, errs, err := p.each(ctx, false, func(ctx context.Context, _ int, r *vmfest.Remote) error {
		net, err := r.CreateNetwork(ctx, n)
		if err == nil {
			mu.Lock()
			if got == nil {
				got = &net
			}
			mu.Unlock()
		}
		return err
	})
	if err != nil {
		return vmfest.Network{}, err
	}
	if err := errors.Join(errs...); err != nil {
		return vmfest.Network{}, err
	}
	return *got, nil
}

// RemoveNetwork implements vmfest.Server, on every live host (or the
// pinned one) that has it.
func (p *Pool) RemoveNetwork(ctx context.Context, name string) error {
	return p.all(ctx, func(ctx context.Context, r *vmfest.Remote) error {
		if err := r.RemoveNetwork(ctx, name); err != nil && !errors.Is(err, vmfest.ErrNotFound) {
			return err
		}
		return nil
	})
}

// CreateVolume implements vmfest.Server on the pinned host: a volume is
// a file on one host, so the Pool must be pinned (WithHost, --host).
func (p *Pool) CreateVolume(ctx context.Context, s vmfest.VolumeSpec) (vmfest.Volume, error) {
	if p.o.pin == "" {
		return vmfest.Volume{}, fmt.Errorf("%w: volume %q: a volume lives on one host: choose it (vmfest --pool ... --host HOST, pool.WithHost)", vmfest.ErrInvalid, s.Name)
	}
	var got vmfest.Volume
	err := p.all(ctx, func(ctx context.Context, r *vmfest.Remote) error {
		v, err := r.CreateVolume(ctx, s)
		got = v
		return err
	})
	return got, err
}

// Volumes implements vmfest.Server: every live host's volumes, by name.
func (p *Pool) Volumes(ctx context.Context) ([]vmfest.Volume, error) {
	lists := map[int][]vmfest.Volume{}
	var mu sync.Mutex
	hs, errs, err := p.each(ctx, true, func(ctx context.Context, i int, r *vmfest.Remote) error {
		vs, err := r.Volumes(ctx)
		mu.Lock()
		lists[i] = vs
		mu.Unlock()
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := p.listed("volumes", hs, errs); err != nil {
		return nil, err
	}
	var out []vmfest.Volume
	for i := range hs {
		out = append(out, lists[i]...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Volume implements vmfest.Server.
func (p *Pool) Volume(ctx context.Context, name string) (vmfest.Volume, error) {
	return first(ctx, p, func(ctx context.Context, r *vmfest.Remote) (vmfest.Volume, error) { return r.Volume(ctx, name) })
}

// RemoveVolume implements vmfest.Server on the pinned host, else on the
// one host that has the volume (refused when several have one of that
// name).
func (p *Pool) RemoveVolume(ctx context.Context, name string) error {
	if p.o.pin != "" {
		return p.all(ctx, func(ctx context.Context, r *vmfest.Remote) error { return r.RemoveVolume(ctx, name) })
	}
	var mu sync.Mutex
	var holders []int
	hs, _, err := p.each(ctx, true, func(ctx context.Context, i int, r *vmfest.Remote) error {
		_, err := r.Volume(ctx, name)
		if err == nil {
			mu.Lock()
			holders = append(holders, i)
			mu.Unlock()
		}
		return err
	})
	if err != nil {
		return err
	}
	switch len(holders) {
	case 0:
		return fmt.Errorf("%w: volume %q on any pool host", vmfest.ErrNotFound, name)
	case 1:
		return p.Pinned(hs[holders[0]].ID).RemoveVolume(ctx, name)
	default:
		return fmt.Errorf("%w: volume %q is on %d pool hosts: choose one (--host)", vmfest.ErrInvalid, name, len(holders))
	}
}
