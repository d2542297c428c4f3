// Package embedetcd runs a real etcd member inside this process (etcd's
// own server, go.etcd.io/etcd/server/v3/embed): the quick-start store of
// `vmfest serve --pool embedded` and the cluster the pool's tests start.
//
// It is a package of its own because etcd's server is a large dependency:
// only the programs that run a member link it, never the pool's clients.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config describes one member.
type Config struct {
	// Name is the member's name, unique in its cluster.
	Name string
	// Dir holds the member's data (created 0700 if missing).
	Dir string
	// ClientURL is where clients connect (http://127.0.0.1:2379); port 0
	// picks a free one, see Member.Endpoints.
	ClientURL string
	// PeerURL is where the other members connect (http://127.0.0.1:2380).
	// A single member may give port 0.
	PeerURL string
	// Cluster maps every member's name to its PeerURL; empty for a
	// single member.
	Cluster map[string]string
	// LogLevel is etcd's own log level (debug, info, warn, error), to
	// standard error; default: etcd logs nothing (it logs through zap,
	// apart from vmfest's log, and reports its failures as errors here).
	LogLevel string
	// Fast trades durability for speed (no fsync, short heartbeat): for
	// tests only.
	Fast bool
}

// Member is a running etcd member.
type Member struct {
	e         *embed.Etcd
	endpoints []string
	close     sync.Once
}

// Start starts the member and returns once it serves clients (it has
// joined its cluster, which needs a quorum of the members running),
// bounded by ctx. On error nothing is left running.
func Start(ctx context.Context, c Config) (*Member, error) {
	if c.Name == "" || c.Dir == "" {
		return nil, errors.New("embedded etcd: give a member name and a data directory")
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd data directory: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.Dir
	if c.LogLevel != "" {
		cfg.LogLevel = c.LogLevel
	} else {
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	}
	cu, err := parseURL("client URL", c.ClientURL)
	if err != nil {
		return nil, err
	}
	pu, err := parseURL("peer URL", c.PeerURL)
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cluster := c.Cluster
	if len(cluster) == 0 {
		cluster = map[string]string{c.Name: c.PeerURL}
	}
	names := make([]string, 0, len(cluster))
	for n := range cluster {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + "=" + cluster[n]
	}
	cfg.InitialCluster = strings.Join(parts, ",")
	cfg.InitialClusterToken = "vmfest-pool"
	if c.Fast {
		cfg.UnsafeNoFsync = true
		cfg.TickMs, cfg.ElectionMs = 50, 500
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd %s: %w", c.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd %s: %w", c.Name, err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd %s: not ready (a quorum of its cluster must run): %w", c.Name, ctx.Err())
	}
	m := &Member{e: e}
	for _, l := range e.Clients {
		m.endpoints = append(m.endpoints, "http://"+l.Addr().String())
	}
	return m, nil
}

// Endpoints are the member's client URLs, with the ports it listens on.
func (m *Member) Endpoints() []string { return append([]string(nil), m.endpoints...) }

// Close stops the member; it is safe to call more than once.
func (m *Member) Close() { m.close.Do(m.e.Close) }

func parseURL(what, s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "unix") {
		return nil, fmt.Errorf("embedded etcd %s %q: write http://host:port", what, s)
	}
	return u, nil
}
