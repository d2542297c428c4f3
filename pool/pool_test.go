package pool_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api"
	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/internal/etcdtest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/pool"
	"github.com/vmfest/vmfest/spec"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// cluster is n real etcd members in this process (etcdtest.Start).
type cluster struct{ *etcdtest.Cluster }

func newCluster(t testing.TB, n int) *cluster { return &cluster{etcdtest.Start(t, n)} }

func (c *cluster) client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := pool.NewClient(pool.Etcd{Endpoints: c.Endpoints})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// host is a Local on the fake driver served by the API on a loopback
// port, with its own state directory, joined to a pool.
type host struct {
	id    string
	local *vmfest.Local
	url   string
	token string
	cfg   pool.HostConfig
	cli   *clientv3.Client
	mem   *pool.Host
}

const (
	testTTL     = 2 * time.Second
	testRefresh = 300 * time.Millisecond
)

func newHost(t testing.TB, cli *clientv3.Client, id, prefix, allowed string) *host {
	t.Helper()
	return newHostOn(t, cli, id, prefix, allowed, fake.New(fake.Options{}))
}

// newHostOn is newHost with the driver drv (nil: QEMU, the default).
func newHostOn(t testing.TB, cli *clientv3.Client, id, prefix, allowed string, drv driver.Driver) *host {
	t.Helper()
	home, err := os.MkdirTemp("", "vmfpool")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // runs last
		testutil.KillMachines(home)
		os.RemoveAll(home)
	})
	l, err := vmfest.NewLocal(vmfest.Config{Home: home, Driver: drv, Accel: os.Getenv("VMFEST_ACCEL"), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	// The tests' model sources are on loopback.
	fetch := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	s, err := api.New(context.Background(), l, api.Config{Home: home, AllowPaths: []string{allowed}, FetchAllow: fetch, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tokenPath := filepath.Join(home, api.TokenFile)
	tok, err := api.LoadToken(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(api.RequireToken(s.Handler(), tokenPath))
	t.Cleanup(ts.Close)
	h := &host{id: id, local: l, url: ts.URL, token: tok, cli: cli}
	h.cfg = pool.HostConfig{ID: id, URL: ts.URL, Token: tok, Server: l, Home: home, Accel: "tcg", Prefix: prefix, TTL: testTTL, Refresh: testRefresh, Logger: quiet()}
	h.join(t)
	return h
}

func (h *host) join(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := pool.Join(ctx, h.cli, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.mem = m
	t.Cleanup(m.Close)
}

// names lists the host's own machines, read from its Local.
func (h *host) names(t *testing.T) []string {
	t.Helper()
	ms, err := h.local.Machines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range ms {
		out = append(out, m.Name())
	}
	return out
}

// eventually retries check until it returns nil or d passes.
func eventually(t *testing.T, d time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var natOnly = spec.Hardware{MemorySize: 128, CPUCount: 1, Network: []spec.NIC{{AttachmentType: "nat"}}}

// testPool is a 3-member etcd cluster, three hosts and a Pool over them.
type testPool struct {
	etcd  *cluster
	hosts []*host
	pool  *pool.Pool
	image spec.Image
}

func newTestPool(t testing.TB) *testPool {
	t.Helper()
	c := newCluster(t, 3)
	allowed := t.TempDir()
	img := testutil.BlankImage(t, allowed, "blank.raw")
	prefix := "/test-" + t.Name() + "/"
	tp := &testPool{etcd: c, image: img}
	var tokens []string
	for _, id := range []string{"a", "b", "c"} {
		h := newHost(t, c.client(t), id, prefix, allowed)
		tp.hosts = append(tp.hosts, h)
		tokens = append(tokens, h.token)
	}
	p, err := pool.Connect(pool.Etcd{Endpoints: c.Endpoints}, pool.WithPrefix(prefix), pool.WithTokens(tokens...), pool.WithHostTimeout(time.Second), pool.WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	tp.pool = p
	return tp
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestPlacementSpreads: 30 creates through the pool land 10 on each of
// three equal hosts (most uncommitted memory first), every name is found
// through the pool on its host, and a destroy frees the name.
func TestPlacementSpreads(t *testing.T) {
	tp := newTestPool(t)
	ctx := ctxT(t)
	for i := range 30 {
		if _, err := tp.pool.Instance(ctx, fmt.Sprintf("m%02d", i), vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range tp.hosts {
		if n := len(h.names(t)); n != 10 {
			t.Errorf("host %s has %d machines, want 10", h.id, n)
		}
	}
	ms, err := tp.pool.Machines(ctx)
	if err != nil || len(ms) != 30 {
		t.Fatalf("Machines = %d, %v; want 30", len(ms), err)
	}
	m, err := tp.pool.FindMachine(ctx, "m07")
	if err != nil {
		t.Fatal(err)
	}
	owner, _ := pool.HostOf(m)
	if st, err := m.State(ctx); err != nil || st != vmfest.PoweredOff {
		t.Fatalf("m07 on %s: %s, %v", owner, st, err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.State(ctx); st != vmfest.Running {
		t.Fatalf("m07 after start: %s", st)
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.pool.FindMachine(ctx, "m07"); !errors.Is(err, vmfest.ErrNotFound) {
		t.Fatalf("find after destroy: %v", err)
	}
	// The freed name can be taken again, and the host that lost one
	// machine has the most memory left, so it gets it.
	m, err = tp.pool.Instance(ctx, "m07", vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly))
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := pool.HostOf(m); again != owner {
		t.Fatalf("m07 made again on %s, want %s (the host with a free slot)", again, owner)
	}
	// A pinned create goes where it is told; a drained host takes none.
	if _, err := tp.pool.Pinned("c").Instance(ctx, "pinned", vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); err != nil {
		t.Fatal(err)
	}
	if err := tp.pool.Drain(ctx, "a", true); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		m, err := tp.pool.Instance(ctx, fmt.Sprintf("d%d", i), vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly))
		if err != nil {
			t.Fatal(err)
		}
		if h, _ := pool.HostOf(m); h == "a" {
			t.Fatalf("d%d placed on drained host a", i)
		}
	}
	if _, err := tp.pool.Pinned("a").Instance(ctx, "refused", vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); !errors.Is(err, vmfest.ErrUnavailable) {
		t.Fatalf("pinned create on a drained host: %v, want ErrUnavailable", err)
	}
	// A failed create leaves no reservation behind.
	if _, err := tp.pool.Instance(ctx, "bad", vmfest.ImageSpec(spec.Image{Location: "/nonexistent/disk.qcow2"}), vmfest.HardwareSpec(natOnly)); err == nil {
		t.Fatal("create from a missing disk worked")
	}
	if _, err := tp.pool.FindMachine(ctx, "bad"); !errors.Is(err, vmfest.ErrNotFound) {
		t.Fatalf("find after a failed create: %v", err)
	}
}

// TestNameRace: 20 creates of one name, spread over the three hosts,
// give exactly one machine.
func TestNameRace(t *testing.T) {
	tp := newTestPool(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := tp.pool.Pinned(tp.hosts[i%3].id)
			_, errs[i] = p.Instance(ctx, "race", vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly))
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, vmfest.ErrExists):
			t.Errorf("a losing create: %v, want ErrExists", err)
		}
	}
	total := 0
	for _, h := range tp.hosts {
		total += len(h.names(t))
	}
	if won != 1 || total != 1 {
		t.Fatalf("%d creates won, %d machines on the hosts; want 1 and 1", won, total)
	}
}

// TestHostGoneAndBack: a host that stops renewing its lease (as a
// SIGKILLed vmfest serve would) has its machines listed Unreachable
// within the TTL while the other hosts keep working; when it joins again
// they come back.
func TestHostGoneAndBack(t *testing.T) {
	tp := newTestPool(t)
	ctx := ctxT(t)
	for i := range 6 {
		if _, err := tp.pool.Instance(ctx, fmt.Sprintf("g%d", i), vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); err != nil {
			t.Fatal(err)
		}
	}
	gone := tp.hosts[2]
	want := gone.names(t)
	if len(want) != 2 {
		t.Fatalf("host c has %v, want 2 machines", want)
	}
	gone.mem.Close()
	stopped := time.Now()
	total := 6
	unreachable := func() (int, error) {
		ms, err := tp.pool.Machines(ctx)
		if err != nil {
			return 0, err
		}
		n := 0
		for _, m := range ms {
			st, err := m.State(ctx)
			if err != nil {
				return 0, err
			}
			if st == pool.Unreachable {
				n++
			}
		}
		if len(ms) != total {
			return n, fmt.Errorf("%d machines listed, want %d", len(ms), total)
		}
		return n, nil
	}
	eventually(t, testTTL+3*time.Second, "host c's machines unreachable", func() error {
		n, err := unreachable()
		if err == nil && n != 2 {
			err = fmt.Errorf("%d unreachable", n)
		}
		return err
	})
	t.Logf("unreachable %s after the host stopped renewing (TTL %s)", time.Since(stopped).Round(100*time.Millisecond), testTTL)
	m, err := tp.pool.FindMachine(ctx, want[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); !errors.Is(err, vmfest.ErrUnavailable) {
		t.Fatalf("start on a gone host: %v, want ErrUnavailable", err)
	}
	// The others keep working: a new machine goes to a live host.
	nm, err := tp.pool.Instance(ctx, "while-gone", vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly))
	if err != nil {
		t.Fatal(err)
	}
	total++
	if h, _ := pool.HostOf(nm); h == gone.id {
		t.Fatal("placed on the gone host")
	}
	if err := nm.Start(ctx); err != nil {
		t.Fatal(err)
	}
	hs, err := tp.pool.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if h.ID == gone.id && (h.Live || h.Reserved != 2) {
			t.Fatalf("gone host status %+v", h)
		}
	}
	gone.join(t)
	eventually(t, 5*time.Second, "host c's machines back", func() error {
		n, err := unreachable()
		if err == nil && n != 0 {
			err = fmt.Errorf("%d unreachable", n)
		}
		return err
	})
	if st, err := m.State(ctx); err != nil || st != pool.Unreachable {
		t.Fatalf("the old handle: %s, %v (a handle is not re-resolved)", st, err)
	}
	m, err = tp.pool.FindMachine(ctx, want[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestEtcdMemberDown: with one of three etcd members stopped, hosts stay
// registered and the pool creates, lists and finds machines.
func TestEtcdMemberDown(t *testing.T) {
	tp := newTestPool(t)
	ctx := ctxT(t)
	if _, err := tp.pool.Instance(ctx, "before", vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); err != nil {
		t.Fatal(err)
	}
	tp.etcd.Members[0].Close()
	for i := range 6 {
		if _, err := tp.pool.Instance(ctx, fmt.Sprintf("after%d", i), vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); err != nil {
			t.Fatal(err)
		}
	}
	// Past a TTL, every host is still registered and every machine
	// listed, none unreachable.
	time.Sleep(testTTL + time.Second)
	ms, err := tp.pool.Machines(ctx)
	if err != nil || len(ms) != 7 {
		t.Fatalf("Machines = %d, %v; want 7", len(ms), err)
	}
	for _, m := range ms {
		if st, err := m.State(ctx); err != nil || st == pool.Unreachable {
			t.Fatalf("%s: %s, %v", m.Name(), st, err)
		}
	}
	if _, err := tp.pool.FindMachine(ctx, "before"); err != nil {
		t.Fatal(err)
	}
}

// TestReconcile: a machine made on a host directly gets its name
// reserved by the host; a machine destroyed on the host directly has its
// name released; a reservation of a create that never finished is
// released after the bound; a name on two hosts is reported, not moved.
func TestReconcile(t *testing.T) {
	tp := newTestPool(t)
	ctx := ctxT(t)
	a := tp.hosts[0]
	// A second host under a's id waits for a's lease, and gives up.
	jctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := pool.Join(jctx, a.cli, a.cfg); !errors.Is(err, vmfest.ErrExists) {
		t.Fatalf("join under a live host's id: %v, want ErrExists", err)
	}
	direct, err := a.local.Instance(ctx, "direct", vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "direct machine found through the pool", func() error {
		m, err := tp.pool.FindMachine(ctx, "direct")
		if err == nil {
			if h, _ := pool.HostOf(m); h != "a" {
				err = fmt.Errorf("on %s", h)
			}
		}
		return err
	})
	if _, err := tp.pool.Instance(ctx, "direct", vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); !errors.Is(err, vmfest.ErrExists) {
		t.Fatalf("second create of a host's name: %v", err)
	}
	if err := direct.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "name released after a direct destroy", func() error {
		_, err := tp.pool.FindMachine(ctx, "direct")
		if errors.Is(err, vmfest.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("find: %v", err)
	})
	// A stale reservation for host b of a create whose client died.
	cli := tp.etcd.client(t)
	prefix := "/test-" + t.Name() + "/"
	stale := fmt.Sprintf(`{"host":"b","state":"creating","since":%q}`, time.Now().Add(-time.Hour).UTC().Format(time.RFC3339))
	fresh := fmt.Sprintf(`{"host":"b","state":"creating","since":%q}`, time.Now().UTC().Format(time.RFC3339))
	if _, err := cli.Put(ctx, prefix+"machines/stale", stale); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, prefix+"machines/fresh", fresh); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "stale reservation released", func() error {
		r, err := cli.Get(ctx, prefix+"machines/stale")
		if err == nil && len(r.Kvs) != 0 {
			err = errors.New("still there")
		}
		return err
	})
	if r, err := cli.Get(ctx, prefix+"machines/fresh"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("a fresh reservation was released: %v", err)
	}
	// One name on two hosts: the pool keeps its owner, the other host
	// reports the conflict.
	if _, err := tp.pool.Pinned("a").Instance(ctx, "twice", vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); err != nil {
		t.Fatal(err)
	}
	if _, err := tp.hosts[1].local.Instance(ctx, "twice", vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "conflict reported", func() error {
		hs, err := tp.pool.Hosts(ctx)
		if err != nil {
			return err
		}
		for _, h := range hs {
			if h.ID == "b" && len(h.Conflicts) == 1 && h.Conflicts[0] == "twice" {
				return nil
			}
		}
		return fmt.Errorf("hosts: %+v", hs)
	})
	m, err := tp.pool.FindMachine(ctx, "twice")
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := pool.HostOf(m); h != "a" {
		t.Fatalf("twice found on %s, want a", h)
	}
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}

// TestModelInstalledOnDemand: a create of an image model that only a
// draining host holds installs it, from the URL it came from, on the host
// the policy chooses, and creates the machine there.
func TestModelInstalledOnDemand(t *testing.T) {
	tp := newTestPool(t)
	ctx := ctxT(t)
	files := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(tp.image.Location))))
	t.Cleanup(files.Close)
	src := files.URL + "/" + filepath.Base(tp.image.Location)
	meta := spec.Image{OSFamily: "linux", Username: "root"}
	if _, err := tp.pool.Pinned("a").SetupModel(ctx, src, vmfest.SetupOptions{ID: "blank", Meta: &meta}); err != nil {
		t.Fatal(err)
	}
	if err := tp.pool.Drain(ctx, "a", true); err != nil {
		t.Fatal(err)
	}
	// Until a's record lists the model, the pool does not know it has it.
	var m vmfest.Machine
	eventually(t, 5*time.Second, "create from a model only a draining host has", func() error {
		var err error
		m, err = tp.pool.Instance(ctx, "on-demand", vmfest.ImageModel("blank"), vmfest.HardwareSpec(natOnly))
		return err
	})
	h, _ := pool.HostOf(m)
	if h == "a" {
		t.Fatal("placed on the draining host")
	}
	if _, err := tp.pool.Pinned(h).Model(ctx, "blank"); err != nil {
		t.Fatalf("model on %s: %v", h, err)
	}
	// A model no host holds is still not found.
	if _, err := tp.pool.Instance(ctx, "nowhere", vmfest.ImageModel("nope"), vmfest.HardwareSpec(natOnly)); !errors.Is(err, vmfest.ErrNotFound) {
		t.Fatalf("create from a model no host has: %v", err)
	}
}
