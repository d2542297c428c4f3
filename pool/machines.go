package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/spec"
)

// Instance implements vmfest.Server: it places the machine on a host
// (see place), reserves its name pool-wide in an etcd transaction, and
// creates it on that host. A name reserved already, by a create on any
// host, is refused with an error wrapping vmfest.ErrExists; a create
// that fails releases the name.
func (p *Pool) Instance(ctx context.Context, name string, image vmfest.Image, hardware vmfest.Hardware, opts ...vmfest.InstanceOption) (vmfest.Machine, error) {
	if err := checkName("machine", name); err != nil {
		return nil, err
	}
	v, err := p.read(ctx, true)
	if err != nil {
		return nil, err
	}
	if r, ok := v.res[name]; ok {
		return nil, fmt.Errorf("%w: machine %q (on pool host %s)", vmfest.ErrExists, name, r.Host)
	}
	h, err := p.place(v, image)
	if errors.Is(err, errNoModelHost) {
		h, err = p.installModel(ctx, v, image.Model, err)
	}
	if err != nil {
		return nil, err
	}
	r, err := p.remote(h)
	if err != nil {
		return nil, err
	}
	rev, err := p.reserve(ctx, name, h.ID, memoryOf(ctx, r, hardware))
	if err != nil {
		return nil, err
	}
	m, err := r.Instance(ctx, name, image, hardware, opts...)
	p.settle(ctx, name, rev, err == nil)
	if err != nil {
		return nil, fmt.Errorf("pool host %s: %w", h.ID, err)
	}
	return &machine{Machine: m, host: h.ID, p: p}, nil
}

// FindMachine implements vmfest.Server: the machine of the host its name
// is reserved for. A machine whose host is gone from the pool, or does
// not answer, is returned all the same: its State is Unreachable and its
// other calls fail with an error wrapping vmfest.ErrUnavailable.
func (p *Pool) FindMachine(ctx context.Context, name string) (vmfest.Machine, error) {
	if err := checkName("machine", name); err != nil {
		return nil, err
	}
	resp, err := p.cli.Txn(ctx).Then(
		clientv3.OpGet(p.keys.machine(name)),
		clientv3.OpGet(p.keys.hosts(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, etcdError("find machine "+name, err)
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) != 1 {
		return nil, fmt.Errorf("%w: machine %q", vmfest.ErrNotFound, name)
	}
	res, err := decode[Reservation]("reservation", kvs[0].Key, kvs[0].Value)
	if err != nil {
		return nil, err
	}
	var host *HostRecord
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		if h, err := decode[HostRecord]("host", kv.Key, kv.Value); err == nil && h.ID == res.Host {
			host = &h
		}
	}
	if host == nil {
		return &unreachable{name: name, host: res.Host, why: "it has left the pool (its lease ran out)"}, nil
	}
	r, err := p.remote(*host)
	if err != nil {
		return nil, err
	}
	m, err := r.FindMachine(ctx, name)
	switch {
	case err == nil:
		return &machine{Machine: m, host: host.ID, p: p}, nil
	case isVmfestError(err):
		return nil, err
	default:
		return &unreachable{name: name, host: host.ID, why: err.Error()}, nil
	}
}

// Machines implements vmfest.Server: every live host's machines, asked
// of all hosts at once, each bounded by the host timeout. The machines of
// a host that is gone or does not answer are listed all the same, from
// their reservations, as Unreachable.
func (p *Pool) Machines(ctx context.Context) ([]vmfest.Machine, error) {
	v, err := p.read(ctx, true)
	if err != nil {
		return nil, err
	}
	hosts := v.sortedHosts()
	lists := make([][]vmfest.Machine, len(hosts))
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := p.remote(h)
			if err != nil {
				errs[i] = err
				return
			}
			hctx, cancel := context.WithTimeout(ctx, p.o.hostTimeout)
			defer cancel()
			lists[i], errs[i] = r.Machines(hctx)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	answered := map[string]bool{}
	why := map[string]string{}
	var out []vmfest.Machine
	for i, h := range hosts {
		if errs[i] != nil {
			p.log.Warn("pool: a host did not list its machines", "host", h.ID, "err", errs[i])
			why[h.ID] = errs[i].Error()
			continue
		}
		answered[h.ID] = true
		for _, m := range lists[i] {
			if r, ok := v.res[m.Name()]; ok && r.Host != h.ID {
				continue // the pool's name is another host's (a conflict the host reports)
			}
			out = append(out, &machine{Machine: m, host: h.ID, p: p})
		}
	}
	for name, r := range v.res {
		if answered[r.Host] || r.State != Created {
			continue
		}
		w, ok := why[r.Host]
		if !ok {
			w = "it has left the pool (its lease ran out)"
		}
		out = append(out, &unreachable{name: name, host: r.Host, why: w})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// HostOf returns the id of the pool host a machine of this Pool is on.
func HostOf(m vmfest.Machine) (string, bool) {
	switch m := m.(type) {
	case *machine:
		return m.host, true
	case *unreachable:
		return m.host, true
	}
	return "", false
}

// machine is a machine of a live host: its host's Remote machine, with
// the calls that change names (Destroy, Clone) kept in step with the
// pool's reservations.
type machine struct {
	vmfest.Machine
	host string
	p    *Pool
}

var _ vmfest.SSHDialer = (*machine)(nil)

// Destroy implements vmfest.Machine, then releases the machine's name.
func (m *machine) Destroy(ctx context.Context, opts ...vmfest.DestroyOption) error {
	if err := m.Machine.Destroy(ctx, opts...); err != nil {
		return err
	}
	// Left reserved if etcd does not answer now: the host's
	// reconciliation releases a name it has no machine for.
	if err := m.p.release(ctx, m.Name(), m.host); err != nil {
		m.p.log.Warn("pool: release after destroy", "machine", m.Name(), "err", err)
	}
	return nil
}

// Clone implements vmfest.Machine: the clone is made on the same host,
// its name reserved pool-wide first.
func (m *machine) Clone(ctx context.Context, name string) (vmfest.Machine, error) {
	if err := checkName("machine", name); err != nil {
		return nil, err
	}
	var mem int64
	if info, err := m.Machine.Info(ctx); err == nil {
		mem = int64(info.HardwareSpec.MemorySize)
	}
	rev, err := m.p.reserve(ctx, name, m.host, mem)
	if err != nil {
		return nil, err
	}
	c, err := m.Machine.Clone(ctx, name)
	m.p.settle(ctx, name, rev, c != nil)
	if c == nil {
		return nil, err
	}
	return &machine{Machine: c, host: m.host, p: m.p}, err
}

// DialSSH implements vmfest.SSHDialer: through the owning host's API.
func (m *machine) DialSSH(ctx context.Context) (net.Conn, error) {
	if d, ok := m.Machine.(vmfest.SSHDialer); ok {
		return d.DialSSH(ctx)
	}
	return nil, fmt.Errorf("%w: machine %s: its host's client cannot tunnel ssh", vmfest.ErrUnsupported, m.Name())
}

// unreachable is a machine whose host is gone or does not answer.
type unreachable struct {
	name, host, why string
}

var _ vmfest.Machine = (*unreachable)(nil)

func (u *unreachable) err() error {
	return fmt.Errorf("%w: machine %q: its pool host %s is unreachable: %s", vmfest.ErrUnavailable, u.name, u.host, u.why)
}

func (u *unreachable) Name() string                                { return u.name }
func (u *unreachable) State(context.Context) (vmfest.State, error) { return Unreachable, nil }

// Info reports the name and the Unreachable state, with no error, so
// that a listing prints the machine beside the others.
func (u *unreachable) Info(context.Context) (vmfest.Info, error) {
	return vmfest.Info{Name: u.name, State: Unreachable}, nil
}
func (u *unreachable) Start(context.Context) error { return u.err() }
func (u *unreachable) Save(context.Context) error  { return u.err() }
func (u *unreachable) Clone(context.Context, string) (vmfest.Machine, error) {
	return nil, u.err()
}
func (u *unreachable) Pause(context.Context) error                            { return u.err() }
func (u *unreachable) Resume(context.Context) error                           { return u.err() }
func (u *unreachable) Stop(context.Context) error                             { return u.err() }
func (u *unreachable) PowerDown(context.Context) error                        { return u.err() }
func (u *unreachable) Destroy(context.Context, ...vmfest.DestroyOption) error { return u.err() }
func (u *unreachable) WaitReady(context.Context) error                        { return u.err() }
func (u *unreachable) ConsoleLog(context.Context) ([]byte, error)             { return nil, u.err() }
func (u *unreachable) IP(context.Context, int) (vmfest.Address, error) {
	return vmfest.Address{}, u.err()
}
func (u *unreachable) Relabel(context.Context, map[string]string, []string) error { return u.err() }
func (u *unreachable) Set(context.Context, vmfest.Change) error                   { return u.err() }
func (u *unreachable) Exec(context.Context, vmfest.ExecRequest) (vmfest.ExecResult, error) {
	return vmfest.ExecResult{}, u.err()
}
func (u *unreachable) TakeSnapshot(context.Context, string) (vmfest.Snapshot, error) {
	return vmfest.Snapshot{}, u.err()
}
func (u *unreachable) Snapshots(context.Context) ([]vmfest.Snapshot, error) { return nil, u.err() }
func (u *unreachable) RestoreSnapshot(context.Context, string) error        { return u.err() }
func (u *unreachable) DeleteSnapshot(context.Context, string) error         { return u.err() }
func (u *unreachable) Attach(context.Context, vmfest.Attachment) (spec.MountPoint, error) {
	return spec.MountPoint{}, u.err()
}
func (u *unreachable) Detach(context.Context, vmfest.Attachment) (spec.MountPoint, error) {
	return spec.MountPoint{}, u.err()
}
func (u *unreachable) CopyIn(context.Context, string, io.Reader, vmfest.CopyOptions) error {
	return u.err()
}
func (u *unreachable) CopyOut(context.Context, string, vmfest.CopyOptions) (io.ReadCloser, error) {
	return nil, u.err()
}
