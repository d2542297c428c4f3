package pool_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/pool"
)

// TestBootThroughPool boots the tiny guest (NAT only: no host network)
// on a host the pool chooses among two QEMU hosts, and reaches it
// through the pool: its address, a command through the guest agent, and
// ssh tunnelled through the owning host's API with the client's own key.
func TestBootThroughPool(t *testing.T) {
	image := testutil.TinyImage(t)
	image.Password = ""
	c := newCluster(t, 1)
	prefix := "/test-" + t.Name() + "/"
	allowed := filepath.Dir(image.Location)
	var tokens []string
	for _, id := range []string{"q1", "q2"} {
		h := newHostOn(t, c.client(t), id, prefix, allowed, nil)
		tokens = append(tokens, h.token)
	}
	p, err := pool.Connect(pool.Etcd{Endpoints: c.Endpoints}, pool.WithPrefix(prefix), pool.WithTokens(tokens...), pool.WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	client := t.TempDir() // the client's $VMFEST_HOME, not a host's
	signer, pub, err := vmfest.LoadSSHKey(client)
	if err != nil {
		t.Fatal(err)
	}
	img := vmfest.ImageSpec(image)
	img.SSHKeys = []string{pub}
	hw := natOnly
	hw.MemorySize = 256
	m, err := p.Instance(ctx, "pooled", img, vmfest.HardwareSpec(hw))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.PowerDown(context.Background())
		m.Destroy(context.Background())
	})
	owner, _ := pool.HostOf(m)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		log, _ := m.ConsoleLog(ctx)
		t.Fatalf("wait ready: %v\nconsole:\n%s", err, log)
	}
	found, err := p.FindMachine(ctx, "pooled")
	if err != nil {
		t.Fatal(err)
	}
	addr, err := found.IP(ctx, 0)
	if err != nil || addr.Source != "nat-forward" || addr.Port == 0 {
		t.Fatalf("ip through the pool: %+v, %v", addr, err)
	}
	res, err := found.Exec(ctx, vmfest.ExecRequest{Command: []string{"hostname"}})
	if err != nil || string(bytes.TrimSpace(res.Stdout)) != "pooled" {
		t.Fatalf("exec through the pool: %+v, %v", res, err)
	}
	var out bytes.Buffer
	begun := time.Now()
	code, err := vmfest.SSH(ctx, found, signer, vmfest.SSHOptions{Command: []string{"uname -s; hostname"}, Stdout: &out, ConnectTimeout: 2 * time.Minute})
	if err != nil || code != 0 || out.String() != "Linux\npooled\n" {
		log, _ := found.ConsoleLog(ctx)
		t.Fatalf("ssh through the pool: exit %d, %v, stdout %q\nconsole:\n%s", code, err, out.String(), log)
	}
	t.Logf("booted on pool host %s; ssh through its tunnel in %s", owner, time.Since(begun).Round(time.Millisecond))
}
