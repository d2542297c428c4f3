package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/testutil"
)

// TestCLIPool: `vmfest serve --pool embedded` runs an etcd member and
// joins its host; a client with --pool sees the host, creates, lists,
// drains and destroys through the pool; when serve ends, the host leaves.
func TestCLIPool(t *testing.T) {
	ports := make([]int, 3)
	var ls []net.Listener
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		ls = append(ls, l)
	}
	for _, l := range ls {
		l.Close()
	}
	hostHome, clientHome := t.TempDir(), t.TempDir()
	t.Cleanup(func() { testutil.KillMachines(hostHome) })
	allowed := t.TempDir()
	disk := filepath.Join(allowed, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	api := fmt.Sprintf("127.0.0.1:%d", ports[0])
	etcd := fmt.Sprintf("127.0.0.1:%d", ports[1])
	peer := fmt.Sprintf("127.0.0.1:%d", ports[2])

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var serveOut, serveErr lockedBuffer
	var wg sync.WaitGroup
	var serveResult error
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveResult = execute(ctx, []string{"--home", hostHome, "serve", "--unix", "", "--listen", api, "--allow-path", allowed,
			"--pool", "embedded", "--pool-host-id", "h1", "--pool-embedded-client", etcd, "--pool-embedded-peer", peer}, &serveOut, &serveErr)
	}()
	defer wg.Wait()
	defer cancel()

	pool := func(args ...string) (string, string, error) {
		tok, _ := os.ReadFile(filepath.Join(hostHome, "token"))
		return run(t, clientHome, append([]string{"--pool", etcd, "--token", strings.TrimSpace(string(tok))}, args...)...)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, _, err := pool("pool", "hosts")
		if err == nil && strings.Contains(out, "h1") && strings.Contains(out, "ok") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host h1 not in the pool: %q %v\nserve: %s", out, err, serveErr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, _, err := pool("create", "vm1", "--image", disk, "--hardware", "micro"); err != nil || !strings.Contains(out, "created vm1") {
		t.Fatalf("create: %q %v", out, err)
	}
	if _, _, err := pool("create", "vm1", "--image", disk); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second create: %v", err)
	}
	if out, _, err := pool("list"); err != nil || !strings.Contains(out, "vm1") || !strings.Contains(out, "powered-off") {
		t.Fatalf("list: %q %v", out, err)
	}
	if out, _, err := pool("pool", "drain", "h1"); err != nil || !strings.Contains(out, "takes no new machines") {
		t.Fatalf("drain: %q %v", out, err)
	}
	if _, _, err := pool("create", "vm2", "--image", disk); err == nil || !strings.Contains(err.Error(), "no host takes new machines") {
		t.Fatalf("create on a drained pool: %v", err)
	}
	if _, _, err := pool("pool", "drain", "--undo", "h1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pool("--server", "http://"+api, "list"); err == nil || !strings.Contains(err.Error(), "exclusive") {
		t.Fatalf("--pool with --server: %v", err)
	}
	if _, _, err := pool("destroy", "vm1"); err != nil {
		t.Fatal(err)
	}
	if out, _, err := pool("list"); err != nil || strings.Contains(out, "vm1") {
		t.Fatalf("list after destroy: %q %v", out, err)
	}
	cancel()
	wg.Wait()
	if serveResult != nil {
		t.Fatalf("serve: %v\n%s", serveResult, serveErr.String())
	}
	if !strings.Contains(serveErr.String(), "joined the pool as host h1") {
		t.Fatalf("serve's log: %s", serveErr.String())
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
