package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api"
	"github.com/vmfest/vmfest/pool"
	"github.com/vmfest/vmfest/pool/embedetcd"
)

// poolBench measures a pool of three hosts (Locals on the QEMU driver,
// each served by the API on a loopback port with its token, as `vmfest
// serve --listen` serves it) whose state is in a three-member etcd
// cluster in this process (members fsync, as a real cluster does):
//
//   - a create through the pool (read the pool, place, reserve and settle
//     in etcd, create on the chosen host's API) beside a create sent to a
//     host's API directly, interleaved one for one, directs round-robin
//     over the same hosts as the pool spreads its own;
//   - listing 300 machines (Machines, then Info of each, as `vmfest list`
//     does), 100 on each host, through the pool, beside listing 300
//     machines held by one host through its API.
func (b *bench) poolBench(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "vmfpool")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	members, endpoints, err := startMembers(ctx, filepath.Join(dir, "etcd"), 3)
	defer func() {
		for _, m := range members {
			m.Close()
		}
	}()
	if err != nil {
		return err
	}
	cli, err := pool.NewClient(pool.Etcd{Endpoints: endpoints})
	if err != nil {
		return err
	}
	defer cli.Close()

	var hosts []*benchHost
	defer func() {
		for _, h := range hosts {
			h.close()
		}
	}()
	var tokens []string
	for _, id := range []string{"a", "b", "c", "single"} {
		h, err := b.newBenchHost(ctx, id)
		if err != nil {
			return err
		}
		hosts = append(hosts, h)
		tokens = append(tokens, h.token)
		if id == "single" {
			break // the baseline of the listing: not in the pool
		}
		if err := h.join(ctx, cli); err != nil {
			return err
		}
	}
	pooled, single := hosts[:3], hosts[3]
	p := pool.New(cli, pool.WithTokens(tokens...), pool.WithLogger(b.log))
	defer p.Close()
	img, hw := vmfest.ImageSpec(b.image), natOnly(64)

	// Creates, interleaved: pool, direct, pool, direct, ...
	n := b.reps(100, 20)
	var viaPool, direct []time.Duration
	spread := map[string]int{}
	for i := range n {
		t0 := time.Now()
		m, err := p.Instance(ctx, fmt.Sprintf("p%04d", i), img, hw)
		if err != nil {
			return fmt.Errorf("create through the pool: %w", err)
		}
		viaPool = append(viaPool, time.Since(t0))
		h, _ := pool.HostOf(m)
		spread[h]++
		t0 = time.Now()
		if _, err := pooled[i%3].remote.Instance(ctx, fmt.Sprintf("d%04d", i), img, hw); err != nil {
			return fmt.Errorf("create on host %s: %w", pooled[i%3].id, err)
		}
		direct = append(direct, time.Since(t0))
	}
	// 300 machines: 100 on each pooled host (the creates above count),
	// and 300 on the single host.
	const total = 300
	fill := func(h *benchHost, prefix string, have, want int) error {
		for i := have; i < want; i++ {
			if _, err := h.local.Instance(ctx, fmt.Sprintf("%s%04d", prefix, i), img, hw); err != nil {
				return err
			}
		}
		return nil
	}
	for _, h := range pooled {
		ms, err := h.local.Machines(ctx)
		if err != nil {
			return err
		}
		if err := fill(h, "f"+h.id, len(ms), total/3); err != nil {
			return err
		}
	}
	if err := fill(single, "s", 0, total); err != nil {
		return err
	}
	// Wait for the hosts to reserve the machines made on them directly.
	for deadline := time.Now().Add(30 * time.Second); ; {
		k, err := listAll(ctx, p)
		if err != nil {
			return err
		}
		if k == total {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the pool lists %d machines, want %d", k, total)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var lists, singles []time.Duration
	for range b.reps(30, 8) {
		t0 := time.Now()
		if _, err := listAll(ctx, p); err != nil {
			return err
		}
		lists = append(lists, time.Since(t0))
		t0 = time.Now()
		if k, err := listAll(ctx, single.remote); err != nil || k != total {
			return fmt.Errorf("list on one host: %d machines, %v", k, err)
		}
		singles = append(singles, time.Since(t0))
	}

	s := b.report.section("Pool (3 hosts, 3-member etcd, all on this machine)")
	mp, md := median(viaPool), median(direct)
	s.add(row{Metric: "create through the pool, p50", Value: ms(mp), Baseline: ms(md) + " (the host's API directly)", Ratio: ratio(mp, md)})
	s.add(row{Metric: "create through the pool, p99 of " + fmt.Sprint(n), Value: ms(percentile(viaPool, 0.99)), Baseline: ms(percentile(direct, 0.99)), Ratio: ratio(percentile(viaPool, 0.99), percentile(direct, 0.99))})
	ml, m1 := median(lists), median(singles)
	s.add(row{Metric: fmt.Sprintf("list %d machines on 3 hosts (`Machines` + `Info` each), p50", total), Value: ms(ml), Baseline: ms(m1) + fmt.Sprintf(" (%d on one host, its API)", total), Ratio: ratio(ml, m1)})
	s.note("The pool's create is its consistent read of hosts, drains and reservations (one etcd transaction), the placement, the reservation (a transaction: name absent, then put), the host's create, and the settle (a transaction); its cost over a direct create is %s per create. The etcd members share this machine's cores and disk with the hosts.", ms(mp-md))
	s.note("%d creates each way; direct creates go round-robin to the same three hosts, the pool placed its own %d/%d/%d.", n, spread["a"], spread["b"], spread["c"])
	return nil
}

// benchHost is a Local served on a loopback port with a token.
type benchHost struct {
	id, url, token string
	home           string
	local          *vmfest.Local
	remote         *vmfest.Remote
	srv            *http.Server
	member         *pool.Host
	stop           context.CancelFunc
}

func (b *bench) newBenchHost(ctx context.Context, id string) (*benchHost, error) {
	home, err := os.MkdirTemp("", "vmfb")
	if err != nil {
		return nil, err
	}
	h := &benchHost{id: id, home: home}
	l, err := vmfest.NewLocal(vmfest.Config{Home: home, Logger: b.log})
	if err != nil {
		os.RemoveAll(home)
		return nil, err
	}
	h.local = l
	sctx, stop := context.WithCancel(ctx)
	h.stop = stop
	s, err := api.New(sctx, l, api.Config{Home: home, AllowPaths: []string{filepath.Dir(b.image.Location)}, Logger: b.log})
	if err != nil {
		h.close()
		return nil, err
	}
	tokenPath := filepath.Join(home, api.TokenFile)
	if h.token, err = api.LoadToken(tokenPath); err != nil {
		h.close()
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.close()
		return nil, err
	}
	h.url = "http://" + ln.Addr().String()
	h.srv = &http.Server{Handler: api.RequireToken(s.Handler(), tokenPath), ReadHeaderTimeout: 10 * time.Second}
	go h.srv.Serve(ln)
	if h.remote, err = vmfest.Connect(h.url, vmfest.WithToken(h.token)); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

func (h *benchHost) join(ctx context.Context, cli *clientv3.Client) error {
	jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m, err := pool.Join(jctx, cli, pool.HostConfig{ID: h.id, URL: h.url, Token: h.token, Server: h.local, Home: h.home, TTL: 10 * time.Second, Refresh: time.Second})
	if err != nil {
		return fmt.Errorf("host %s joins the pool: %w", h.id, err)
	}
	h.member = m
	return nil
}

func (h *benchHost) close() {
	if h.member != nil {
		h.member.Close()
	}
	if h.remote != nil {
		h.remote.Close()
	}
	if h.srv != nil {
		h.srv.Close()
	}
	if h.stop != nil {
		h.stop()
	}
	os.RemoveAll(h.home)
}

// startMembers starts an n-member etcd cluster on loopback ports with its
// data under dir; on error, the members started are returned to close.
func startMembers(ctx context.Context, dir string, n int) ([]*embedetcd.Member, []string, error) {
	var ls []net.Listener
	for range 2 * n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		ls = append(ls, l)
	}
	addr := func(i int) string { return "http://" + ls[i].Addr().String() }
	peers := map[string]string{}
	for i := range n {
		peers[fmt.Sprintf("m%d", i)] = addr(2*i + 1)
	}
	urls := make([]string, 2*n)
	for i, l := range ls {
		urls[i] = addr(i)
		l.Close()
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	members := make([]*embedetcd.Member, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		name := fmt.Sprintf("m%d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			members[i], errs[i] = embedetcd.Start(sctx, embedetcd.Config{Name: name, Dir: filepath.Join(dir, name), ClientURL: urls[2*i], PeerURL: urls[2*i+1], Cluster: peers})
		}()
	}
	wg.Wait()
	var started []*embedetcd.Member
	var endpoints []string
	for _, m := range members {
		if m != nil {
			started = append(started, m)
			endpoints = append(endpoints, m.Endpoints()...)
		}
	}
	return started, endpoints, errors.Join(errs...)
}
