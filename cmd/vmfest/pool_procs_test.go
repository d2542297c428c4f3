package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/etcdtest"
	"github.com/vmfest/vmfest/internal/netnstest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/store"
)

// poolTTL is the hosts' lease in TestPoolProcesses: the pool must see a
// SIGKILLed host gone within it (and a little slack for the check).
const poolTTL = 2 * time.Second

// TestPoolProcesses runs a pool as a user would: three `vmfest serve`
// processes (this test binary as the CLI), each with its own state
// directory and its own loopback port, joined to a three-member etcd
// cluster, and every client call a `vmfest --pool` process of its own.
// It runs inside network and PID namespaces of its own (netnstest), so
// the guest it boots, its forwards and every process it starts stay in
// them and die with them.
//
//   - 30 creates through the pool spread 10/10/10 (the placement policy);
//     `list` shows each machine's host.
//   - One machine boots on the real QEMU driver: `ip` through the pool
//     gives its forward, which answers SSH; `ssh` through the owner's API
//     runs a command.
//   - `inventory` through the pool gives a ProxyCommand through the
//     pool, which the real ssh follows.
//   - One etcd member stops: creates and lists go on.
//   - The guest's host's `vmfest serve` is SIGKILLed: its machines read
//     `unreachable` within the lease TTL, the other hosts keep working;
//     restarted on the same state directory, its machines come back, the
//     guest still running (QEMU outlives its server) and reached again.
//   - 20 `vmfest --host H create` processes race for one name over the
//     three hosts: exactly one wins.
func TestPoolProcesses(t *testing.T) {
	meta := testutil.TinyImageMeta(t)
	if !netnstest.Enter(t) {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	begun := time.Now()
	keyOnly, hw := keyOnlyTiny(t, meta)
	allowed := filepath.Dir(testutil.TinyImage(t).Location)

	etcd := etcdtest.Start(t, 3)
	endpoints := strings.Join(etcd.Endpoints, ",")

	ports := testutil.LoopbackPorts(t, 3)
	hosts := make([]*serveProc, 3)
	for i := range hosts {
		hosts[i] = &serveProc{
			id: fmt.Sprintf("h%d", i+1), exe: exe, home: machineHome(t),
			args: []string{"serve", "--unix", "", "--listen", fmt.Sprintf("127.0.0.1:%d", ports[i]), "--allow-path", allowed,
				"--pool", endpoints, "--pool-ttl", poolTTL.String()},
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(hosts))
	for i, h := range hosts {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = h.start(t) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	var tokens []string
	for _, h := range hosts {
		tok, err := os.ReadFile(filepath.Join(h.home, "token"))
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, strings.TrimSpace(string(tok)))
	}
	client := poolClient{t: t, exe: exe, home: t.TempDir(), env: []string{"VMFEST_POOL=" + endpoints, "VMFEST_POOL_TOKENS=" + strings.Join(tokens, ",")}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	waitFor(ctx, t, "three hosts ok in `pool hosts`", func() error {
		out, err := client.run(ctx, "pool", "hosts")
		if h := health(out); err == nil && (h["h1"] != "ok" || h["h2"] != "ok" || h["h3"] != "ok") {
			err = fmt.Errorf("%s", out)
		}
		return err
	})
	t.Logf("etcd and three hosts up in %s", time.Since(begun).Round(10*time.Millisecond))

	// 30 creates spread by the policy: all hosts equal, so 10 each.
	step := time.Now()
	for i := range 30 {
		client.must(ctx, "create", fmt.Sprintf("m%02d", i), "--image", keyOnly, "--hardware", hw)
	}
	t.Logf("30 creates through the pool in %s", time.Since(step).Round(10*time.Millisecond))
	for _, h := range hosts {
		if n := len(h.machines(t)); n != 10 {
			t.Errorf("host %s holds %d machines, want 10", h.id, n)
		}
	}
	rows := client.list(ctx)
	if len(rows) != 30 {
		t.Fatalf("list through the pool: %d machines, want 30", len(rows))
	}
	for _, h := range hosts {
		for _, name := range h.machines(t) {
			if rows[name].Host != h.id || rows[name].State != "powered-off" {
				t.Errorf("list: %s is %+v, want powered-off on %s", name, rows[name], h.id)
			}
		}
	}
	if out := client.must(ctx, "list"); !strings.Contains(out, "HOST") {
		t.Errorf("list through the pool has no HOST column:\n%s", out)
	}

	// Boot one (m00: the policy's first pick, h1) and reach it through
	// the pool.
	booted, bootHost := "m00", hosts[0]
	if rows[booted].Host != bootHost.id {
		t.Fatalf("%s is on %s, want %s (equal hosts: the smallest id first)", booted, rows[booted].Host, bootHost.id)
	}
	step = time.Now()
	client.must(ctx, "start", booted, "--wait", "90s")
	t.Logf("start --wait through the pool in %s", time.Since(step).Round(10*time.Millisecond))
	addr := strings.TrimSpace(client.must(ctx, "ip", booted, "--wait", "60s"))
	if banner := sshBanner(ctx, addr); !strings.HasPrefix(banner, "SSH-2.0-") {
		t.Fatalf("ip through the pool gave %s, which does not answer SSH: %q", addr, banner)
	}
	if out := client.must(ctx, "ssh", booted, "--wait", "60s", "--", "hostname"); out != booted+"\n" {
		t.Fatalf("ssh through the pool: %q", out)
	}

	// The Ansible inventory through the pool: a ProxyCommand of vmfest
	// ssh-proxy through the pool, which the real ssh follows.
	var vars struct {
		Host   string `json:"ansible_host"`
		User   string `json:"ansible_user"`
		Common string `json:"ansible_ssh_common_args"`
		Key    string `json:"ansible_ssh_private_key_file"`
	}
	if err := json.Unmarshal([]byte(client.must(ctx, "inventory", "--host", booted)), &vars); err != nil || vars.Host != booted || !strings.Contains(vars.Common, "--pool '"+endpoints+"'") || !strings.Contains(vars.Common, "ssh-proxy '"+booted+"'") {
		t.Fatalf("inventory --host %s through the pool: %+v, %v", booted, vars, err)
	}
	if sshBin, err := exec.LookPath("ssh"); err == nil {
		line := fmt.Sprintf("exec %s %s -o BatchMode=yes -i %s %s@%s hostname", sshBin, vars.Common, vars.Key, vars.User, vars.Host)
		cmd := exec.CommandContext(ctx, "sh", "-c", line)
		cmd.Env = append(append(os.Environ(), "VMFEST_TEST_CLI=1"), client.env...)
		if out, err := cmd.CombinedOutput(); err != nil || string(out) != booted+"\n" {
			t.Fatalf("ssh with the inventory's ProxyCommand: %v\n%s\n%s", err, line, out)
		}
	}

	// One etcd member of three stops: the pool keeps working.
	etcd.Members[0].Close()
	client.must(ctx, "create", "after-etcd", "--image", keyOnly, "--hardware", hw)
	if rows := client.list(ctx); len(rows) != 31 {
		t.Fatalf("list with an etcd member down: %d machines, want 31", len(rows))
	}
	waitFor(ctx, t, "hosts registered past a TTL with an etcd member down", func() error {
		time.Sleep(poolTTL)
		out, err := client.run(ctx, "pool", "hosts")
		if h := health(out); err == nil && (h["h1"] != "ok" || h["h2"] != "ok" || h["h3"] != "ok") {
			err = fmt.Errorf("%s", out)
		}
		return err
	})

	// SIGKILL the booted guest's host: its machines turn unreachable within
	// the TTL, the others keep working.
	mine := bootHost.machines(t)
	killed := time.Now()
	bootHost.kill(t)
	waitForWithin(ctx, t, poolTTL+2*time.Second, "host "+bootHost.id+" gone from the pool and its machines unreachable", func() error {
		out, err := client.run(ctx, "pool", "hosts")
		if err != nil {
			return err
		}
		if health(out)[bootHost.id] != "gone" {
			return fmt.Errorf("host %s not gone yet:\n%s", bootHost.id, out)
		}
		rows := client.list(ctx)
		for _, name := range mine {
			if rows[name].State != "unreachable" || rows[name].Host != bootHost.id {
				return fmt.Errorf("%s: %+v", name, rows[name])
			}
		}
		return nil
	})
	t.Logf("host %s gone and its %d machines unreachable %s after SIGKILL (TTL %s)", bootHost.id, len(mine), time.Since(killed).Round(10*time.Millisecond), poolTTL)
	other := mine[0]
	if other == booted {
		other = mine[1]
	}
	if _, errOut, err := client.call(ctx, "start", other); err == nil || !strings.Contains(errOut, "unreachable") {
		t.Fatalf("start on a gone host: %v %s", err, errOut)
	}
	client.must(ctx, "create", "while-gone", "--image", keyOnly, "--hardware", hw)
	rows = client.list(ctx)
	if h := rows["while-gone"].Host; h == bootHost.id || h == "" {
		t.Fatalf("while-gone placed on %q", h)
	}
	client.must(ctx, "destroy", "while-gone")

	// Restart it on the same state directory: its machines come back, the
	// guest still running, reached again through the pool.
	step = time.Now()
	if err := bootHost.start(t); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "host "+bootHost.id+"'s machines back", func() error {
		rows := client.list(ctx)
		for _, name := range mine {
			want := "powered-off"
			if name == booted {
				want = "running"
			}
			if rows[name].State != want || rows[name].Host != bootHost.id {
				return fmt.Errorf("%s: %+v, want %s on %s", name, rows[name], want, bootHost.id)
			}
		}
		return nil
	})
	t.Logf("host %s back with its machines %s after its restart", bootHost.id, time.Since(step).Round(10*time.Millisecond))
	if out := client.must(ctx, "ssh", booted, "--wait", "60s", "--", "hostname"); out != booted+"\n" {
		t.Fatalf("ssh after the host's restart: %q", out)
	}

	// 20 creates of one name, pinned round-robin to the three hosts,
	// each its own process: exactly one wins.
	type result struct {
		errOut string
		err    error
	}
	results := make([]result, 20)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, results[i].errOut, results[i].err = client.call(ctx, "--host", hosts[i%3].id, "create", "race", "--image", keyOnly, "--hardware", hw)
		}()
	}
	wg.Wait()
	won := 0
	for _, r := range results {
		switch {
		case r.err == nil:
			won++
		case !strings.Contains(r.errOut, "already exists"):
			t.Errorf("a losing create: %v: %s", r.err, r.errOut)
		}
	}
	on := 0
	for _, h := range hosts {
		for _, name := range h.machines(t) {
			if name == "race" {
				on++
			}
		}
	}
	if won != 1 || on != 1 {
		t.Fatalf("%d of 20 racing creates won, %d hosts hold the machine; want 1 and 1", won, on)
	}
	client.must(ctx, "power-down", booted)
	t.Logf("whole run %s", time.Since(begun).Round(10*time.Millisecond))
}

// serveProc is one `vmfest serve` process of the pool.
type serveProc struct {
	id, exe, home string
	args          []string
	mu            sync.Mutex
	cmd           *exec.Cmd
	done          chan struct{}
}

// start runs the server and returns once it has joined the pool (its
// log says so), bounded; the test's cleanup kills it.
func (s *serveProc) start(t *testing.T) error {
	log, err := os.OpenFile(filepath.Join(s.home, "serve.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command(s.exe, append([]string{"--home", s.home}, append(s.args, "--pool-host-id", s.id)...)...)
	cmd.Env = append(os.Environ(), "VMFEST_TEST_CLI=1")
	cmd.Stdout, cmd.Stderr = log, w
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return fmt.Errorf("host %s: %w", s.id, err)
	}
	w.Close()
	done := make(chan struct{})
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	t.Cleanup(func() { s.kill(t) })
	joined := make(chan struct{})
	go func() {
		defer r.Close()
		sc := bufio.NewScanner(r)
		once := sync.Once{}
		for sc.Scan() {
			fmt.Fprintln(log, sc.Text())
			if strings.Contains(sc.Text(), "joined the pool as host") {
				once.Do(func() { close(joined) })
			}
		}
	}()
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-joined:
		return nil
	case <-done:
		return fmt.Errorf("host %s: vmfest serve ended: %s\n%s", s.id, cmd.ProcessState, readFile(filepath.Join(s.home, "serve.log")))
	case <-time.After(60 * time.Second):
		return fmt.Errorf("host %s: vmfest serve did not join the pool in 60s\n%s", s.id, readFile(filepath.Join(s.home, "serve.log")))
	}
}

// kill SIGKILLs the server, if it runs, and waits for it to end.
func (s *serveProc) kill(t *testing.T) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("kill host %s: %v", s.id, err)
	}
	<-done
}

// machines are the names in the host's own state directory.
func (s *serveProc) machines(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.home, store.MachinesDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out
}

// poolClient runs `vmfest --pool` processes with a home of their own.
type poolClient struct {
	t         *testing.T
	exe, home string
	env       []string
}

// call runs one CLI process, bounded by ctx.
func (c poolClient) call(ctx context.Context, args ...string) (string, string, error) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, c.exe, append([]string{"--home", c.home}, args...)...)
	cmd.Env = append(append(os.Environ(), "VMFEST_TEST_CLI=1"), c.env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

func (c poolClient) run(ctx context.Context, args ...string) (string, error) {
	out, errOut, err := c.call(ctx, args...)
	if err != nil {
		return out, fmt.Errorf("vmfest %s: %w: %s", strings.Join(args, " "), err, errOut)
	}
	return out, nil
}

func (c poolClient) must(ctx context.Context, args ...string) string {
	c.t.Helper()
	out, err := c.run(ctx, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

type listRow struct {
	State string `json:"state"`
	Host  string `json:"host"`
}

// list is `list --json` through the pool, by name.
func (c poolClient) list(ctx context.Context) map[string]listRow {
	c.t.Helper()
	var rows []struct {
		Name string `json:"name"`
		listRow
	}
	if err := json.Unmarshal([]byte(c.must(ctx, "list", "--json")), &rows); err != nil {
		c.t.Fatal(err)
	}
	out := map[string]listRow{}
	for _, r := range rows {
		out[r.Name] = r.listRow
	}
	return out
}

// keyOnlyTiny writes the tiny image's spec without its password (only
// the client's key logs in, so ssh goes through the pool with it) and a
// NAT-only hardware spec; it returns their paths.
func keyOnlyTiny(t *testing.T, meta string) (image, hardware string) {
	t.Helper()
	im := testutil.TinyImage(t)
	im.Password = ""
	data, err := json.Marshal(im)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	image, hardware = filepath.Join(dir, "tiny-key-only.json"), filepath.Join(dir, "nat.yaml")
	if err := os.WriteFile(image, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hardware, []byte("memory-size: 256\ncpu-count: 1\nnetwork:\n  - attachment-type: nat\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return image, hardware
}

// sshBanner reads the first line an SSH server sends at addr.
func sshBanner(ctx context.Context, addr string) string {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return line + err.Error()
	}
	return line
}

// waitFor retries check until it returns nil, or fails the test when ctx
// ends.
func waitFor(ctx context.Context, t *testing.T, what string, check func() error) {
	t.Helper()
	waitForWithin(ctx, t, time.Minute, what, check)
}

// waitForWithin retries check until it returns nil, or fails the test
// after d.
func waitForWithin(ctx context.Context, t *testing.T, d time.Duration, what string, check func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %s: %v", what, d, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// health reads `pool hosts`: each host's HEALTH column.
func health(out string) map[string]string {
	h := map[string]string{}
	for _, line := range strings.Split(out, "\n")[1:] {
		if f := strings.Fields(line); len(f) >= 2 {
			h[f[0]] = f[1]
		}
	}
	return h
}

func readFile(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}

// TestPoolHostTLS: a pool host serving its API over https with a
// certificate of a private CA is reached by a --pool client given that
// CA (--pool-host-cacert), and refused without it.
func TestPoolHostTLS(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	endpoints := strings.Join(etcd.Endpoints, ",")
	cert, key, _ := testutil.SelfSigned(t)
	hostHome, clientHome := machineHome(t), t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", testutil.LoopbackPorts(t, 1)[0])
	ctx, cancel := context.WithCancel(context.Background())
	var serveErr lockedBuffer
	served := make(chan error, 1)
	go func() {
		served <- execute(ctx, []string{"--home", hostHome, "serve", "--unix", "", "--listen", addr, "--tls-cert", cert, "--tls-key", key,
			"--pool", endpoints, "--pool-host-id", "tls1"}, io.Discard, &serveErr)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v\n%s", err, serveErr.String())
		}
	})
	waitForWithin(context.Background(), t, time.Minute, "host tls1 joined", func() error {
		if !strings.Contains(serveErr.String(), "joined the pool as host tls1, reachable at https://"+addr) {
			return fmt.Errorf("serve: %s", serveErr.String())
		}
		return nil
	})
	tok, err := os.ReadFile(filepath.Join(hostHome, "token"))
	if err != nil {
		t.Fatal(err)
	}
	pool := []string{"--pool", endpoints, "--token", strings.TrimSpace(string(tok))}
	for _, c := range []cliCase{
		{args: append(pool, "pool", "hosts"), stdout: "tls1  no-answer", stderr: "certificate"},
		{args: append(pool, "--pool-host-cacert", cert, "pool", "hosts"), stdout: "tls1  ok"},
		{args: append(pool, "--pool-host-cacert", cert, "list"), stdout: "NAME  HOST"},
		{args: append(pool, "--pool-host-cacert", key, "list"), code: 1, stderr: "--pool-host-cacert " + key + ": no PEM certificate in it"},
	} {
		c.check(t, clientHome)
	}
}
