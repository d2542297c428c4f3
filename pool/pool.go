package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/store"
)

// DefaultHostTimeout bounds each host's answer to a listing (Machines,
// Models, ...): a host slower than this is reported, not waited for.
const DefaultHostTimeout = 5 * time.Second

// Option tunes a Pool.
type Option func(*options)

type options struct {
	tokens      map[string]string // fingerprint -> token
	tls         *tls.Config
	pin         string
	prefix      string
	hostTimeout time.Duration
	logger      *slog.Logger
}

// WithTokens gives the bearer tokens of the pool's TCP hosts. Each host
// is sent only the token whose SHA-256 it published.
func WithTokens(tokens ...string) Option {
	return func(o *options) {
		for _, t := range tokens {
			if t = strings.TrimSpace(t); t != "" {
				o.tokens[TokenFingerprint(t)] = t
			}
		}
	}
}

// WithHostTLS sets the TLS configuration for https:// hosts (a private
// CA, a client certificate).
func WithHostTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithHost pins the Pool to one host: machines are created there, and
// the per-host calls (models, hardware, networks, volumes) go there only.
func WithHost(id string) Option { return func(o *options) { o.pin = id } }

// WithPrefix sets the pool's key prefix in etcd (default DefaultPrefix):
// one etcd cluster may hold several pools.
func WithPrefix(prefix string) Option { return func(o *options) { o.prefix = prefix } }

// WithHostTimeout bounds each host's answer to a listing (default
// DefaultHostTimeout).
func WithHostTimeout(d time.Duration) Option { return func(o *options) { o.hostTimeout = d } }

// WithLogger receives warnings (a host that failed a listing).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Pool is a vmfest.Server over the hosts registered in an etcd cluster
// (see Join). Machine calls go to the host that owns the machine, through
// its API (a vmfest.Remote), so they behave and fail as a Remote's do,
// ssh tunnels and file copies included. It is safe for concurrent use.
type Pool struct {
	cli   *clientv3.Client
	own   bool
	o     options
	keys  keys
	log   *slog.Logger
	conns *conns
}

var _ vmfest.Server = (*Pool)(nil)

// conns caches one Remote per host.
type conns struct {
	mu sync.Mutex
	m  map[string]*hostConn
}

type hostConn struct {
	url, fingerprint string
	r                *vmfest.Remote
}

// New returns a Pool over the etcd client cli, which the caller keeps
// and closes after the Pool.
func New(cli *clientv3.Client, opts ...Option) *Pool {
	o := options{tokens: map[string]string{}, hostTimeout: DefaultHostTimeout}
	for _, f := range opts {
		f(&o)
	}
	p := &Pool{cli: cli, o: o, keys: newKeys(o.prefix), log: o.logger, conns: &conns{m: map[string]*hostConn{}}}
	if p.log == nil {
		p.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return p
}

// Connect returns a Pool over the etcd cluster c; Close closes its
// client. It does not contact etcd: the first call does.
func Connect(c Etcd, opts ...Option) (*Pool, error) {
	cli, err := NewClient(c)
	if err != nil {
		return nil, err
	}
	p := New(cli, opts...)
	p.own = true
	return p, nil
}

// Pinned returns a view of the Pool pinned to host id (see WithHost),
// sharing its connections.
func (p *Pool) Pinned(id string) *Pool {
	q := *p
	q.o.pin = id
	q.own = false
	return &q
}

// Close releases the hosts' idle connections, and the etcd client when
// Connect made it.
func (p *Pool) Close() error {
	p.conns.mu.Lock()
	for _, c := range p.conns.m {
		c.r.Close()
	}
	p.conns.mu.Unlock()
	if p.own {
		return p.cli.Close()
	}
	return nil
}

// view is one consistent read of the pool (one etcd revision).
type view struct {
	hosts  map[string]HostRecord
	drains map[string]bool
	res    map[string]resv
}

type resv struct {
	Reservation
	rev int64
}

// read reads the hosts, the drains and (when machines) the reservations
// in one transaction.
func (p *Pool) read(ctx context.Context, machines bool) (view, error) {
	ops := []clientv3.Op{
		clientv3.OpGet(p.keys.hosts(), clientv3.WithPrefix()),
		clientv3.OpGet(p.keys.drains(), clientv3.WithPrefix()),
	}
	if machines {
		ops = append(ops, clientv3.OpGet(p.keys.machines(), clientv3.WithPrefix()))
	}
	resp, err := p.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return view{}, etcdError("read the pool", err)
	}
	v := view{hosts: map[string]HostRecord{}, drains: map[string]bool{}, res: map[string]resv{}}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		h, err := decode[HostRecord]("host", kv.Key, kv.Value)
		if err != nil {
			p.log.Warn("pool", "err", err)
			continue
		}
		v.hosts[h.ID] = h
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		v.drains[strings.TrimPrefix(string(kv.Key), p.keys.drains())] = true
	}
	if machines {
		for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
			r, err := decode[Reservation]("reservation", kv.Key, kv.Value)
			if err != nil {
				p.log.Warn("pool", "err", err)
				continue
			}
			v.res[strings.TrimPrefix(string(kv.Key), p.keys.machines())] = resv{r, kv.ModRevision}
		}
	}
	return v, nil
}

// etcdError words an etcd failure for the user; it wraps
// vmfest.ErrUnavailable (the same call may work once etcd answers).
func etcdError(what string, err error) error {
	return fmt.Errorf("%w: pool: %s in etcd: %w", vmfest.ErrUnavailable, what, err)
}

// remote returns the Remote of host h, sending it only its own token.
func (p *Pool) remote(h HostRecord) (*vmfest.Remote, error) {
	p.conns.mu.Lock()
	defer p.conns.mu.Unlock()
	if c, ok := p.conns.m[h.ID]; ok && c.url == h.URL && c.fingerprint == h.TokenSHA256 {
		return c.r, nil
	}
	var opts []vmfest.ConnectOption
	if u, err := url.Parse(h.URL); err == nil && u.Scheme != "unix" && h.TokenSHA256 != "" {
		tok, ok := p.o.tokens[h.TokenSHA256]
		if !ok {
			return nil, fmt.Errorf("%w: pool host %s (%s) takes a token this client was not given (its SHA-256 begins %s): give it with --token or pool.WithTokens", fs.ErrPermission, h.ID, h.URL, h.TokenSHA256[:min(12, len(h.TokenSHA256))])
		}
		// As the CLI's --server: no token in clear across a network.
		if u.Scheme == "http" && !loopback(u.Hostname()) {
			return nil, fmt.Errorf("%w: pool host %s advertises %s: plain http reaches only a host on this machine (the token would cross the network in clear); serve it over https (--tls-cert, --tls-key)", fs.ErrPermission, h.ID, h.URL)
		}
		opts = append(opts, vmfest.WithToken(tok))
	}
	if p.o.tls != nil {
		opts = append(opts, vmfest.WithTLSConfig(p.o.tls))
	}
	r, err := vmfest.Connect(h.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("pool host %s: %w", h.ID, err)
	}
	if old, ok := p.conns.m[h.ID]; ok {
		old.r.Close()
	}
	p.conns.m[h.ID] = &hostConn{url: h.URL, fingerprint: h.TokenSHA256, r: r}
	return r, nil
}

// checkName refuses a name the hosts would refuse, before it is reserved.
func checkName(kind, name string) error {
	if err := store.ValidateName(kind, name); err != nil {
		return fmt.Errorf("%w: %w", vmfest.ErrInvalid, err)
	}
	return nil
}

// sortedHosts returns the live hosts, by id.
func (v view) sortedHosts() []HostRecord {
	out := make([]HostRecord, 0, len(v.hosts))
	for _, h := range v.hosts {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// isVmfestError reports whether err is an answer of a host (a vmfest
// error), not a failure to reach it.
func isVmfestError(err error) bool {
	var se *vmfest.StateError
	for _, e := range []error{vmfest.ErrNotFound, vmfest.ErrExists, vmfest.ErrWrongState, vmfest.ErrInvalid, vmfest.ErrTimeout, vmfest.ErrUnsupported, fs.ErrPermission, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	return errors.As(err, &se)
}

// loopback reports whether host (a URL's host name) is this machine.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Zone() == "" && ip.Unmap().IsLoopback()
}
