// Package etcdtest starts real etcd clusters inside a test's process
// (pool/embedetcd), on loopback ports, with their data in the test's
// temporary directories. Only _test.go files import it.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/pool/embedetcd"
)

// Cluster is the members of a cluster Start made and their client
// endpoints. A test may close a member to take it away.
type Cluster struct {
	Members   []*embedetcd.Member
	Endpoints []string
}

// Start starts an n-member cluster (members m0, m1, ...) and has the test
// close every member when it ends.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := testutil.LoopbackPorts(t, 2*n)
	dir := t.TempDir()
	peers := map[string]string{}
	for i := range n {
		peers[fmt.Sprintf("m%d", i)] = fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
	}
	c := &Cluster{Members: make([]*embedetcd.Member, n)}
	t.Cleanup(func() {
		for _, m := range c.Members {
			if m != nil {
				m.Close()
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		name := fmt.Sprintf("m%d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Members[i], errs[i] = embedetcd.Start(ctx, embedetcd.Config{
				Name: name, Dir: filepath.Join(dir, name), Cluster: peers, Fast: true,
				ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]), PeerURL: peers[name],
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Members {
		c.Endpoints = append(c.Endpoints, m.Endpoints()...)
	}
	return c
}
