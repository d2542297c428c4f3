package pool

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Etcd says how to reach the pool's etcd cluster, with the options etcd's
// own clients take (etcdctl --endpoints, --cacert, --cert, --key, --user).
type Etcd struct {
	// Endpoints are client URLs (http://10.0.0.1:2379) or host:port.
	Endpoints []string
	// CACert, Cert and Key are PEM files: the CA that signed the
	// members' certificates, and this client's certificate and key.
	CACert, Cert, Key string
	// Username and Password log in to etcd's authentication.
	Username, Password string
	// DialTimeout bounds the first connection (default 5 s).
	DialTimeout time.Duration
}

// ParseEndpoints splits a comma-separated endpoint list.
func ParseEndpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// NewClient returns an etcd client for c. It does not wait for the
// cluster: the first request does.
func NewClient(c Etcd) (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("pool: give the etcd endpoints (host:port or http(s)://host:port, comma-separated)")
	}
	cfg := clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: c.DialTimeout,
		Username:    c.Username,
		Password:    c.Password,
		// etcd's client logs through zap; vmfest reports its errors.
		Logger: zap.NewNop(),
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if c.CACert != "" || c.Cert != "" || c.Key != "" {
		if (c.Cert == "") != (c.Key == "") {
			return nil, errors.New("pool: give both the client certificate and its key, or neither")
		}
		info := transport.TLSInfo{TrustedCAFile: c.CACert, CertFile: c.Cert, KeyFile: c.Key}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("pool: etcd TLS: %w", err)
		}
		tc.MinVersion = tls.VersionTLS12
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("pool: etcd client: %w", err)
	}
	return cli, nil
}
