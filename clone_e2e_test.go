package vmfest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
	"golang.org/x/sys/unix"
)

// cloneHardware is micro itself (512 MiB; NIC 0 host-only, NIC 1 nat,
// which vmfest ssh goes through).
func cloneHardware() Hardware {
	return HardwareSpec(spec.BuiltinHardware()["micro"])
}

// fileSum is the SHA-256 of a file's content.
func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// guestGenID reads the VM generation ID from the guest's memory where its
// ACPI tables tell the guest to look: the SSDT's VGIA (a DWORD, read in the
// guest through the agent) plus 40 (the ADDR method's offset). The guest
// kernel's /dev/mem does not reach that reserved page, so the 16 bytes are
// read from the guest's physical memory through QEMU's monitor (xp). It
// returns the GUID in QEMU's UUID form.
func guestGenID(ctx context.Context, t *testing.T, l *Local, m Machine) string {
	t.Helper()
	script := `for f in /sys/firmware/acpi/tables/SSDT*; do
	a=$(od -A n -t x1 -v "$f" | tr -s ' \n' '  ' | grep -o '56 47 49 41 0c [0-9a-f][0-9a-f] [0-9a-f][0-9a-f] [0-9a-f][0-9a-f] [0-9a-f][0-9a-f]' | head -n 1)
	[ -n "$a" ] || continue
	set -- $a
	echo $((0x$9$8$7$6 + 40))
	exit 0
done
exit 1`
	addr := guestRun(ctx, t, m, script)
	raw, err := qemu.RunQMP(ctx, filepath.Join(l.home.MachinePath(m.Name()), store.QMPSocket), "human-monitor-command", map[string]string{"command-line": "xp /16xb " + addr})
	if err != nil {
		t.Fatal(err)
	}
	var out string
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	// "ADDR: 0x.. 0x.. ..." lines.
	var hexs strings.Builder
	for _, line := range strings.Split(out, "\n") {
		_, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for _, f := range strings.Fields(rest) {
			hexs.WriteString(strings.TrimPrefix(f, "0x"))
		}
	}
	b, err := hex.DecodeString(hexs.String())
	if err != nil || len(b) != 16 {
		t.Fatalf("the guest's vmgenid buffer at %s: %q", addr, out)
	}
	// QEMU stores the GUID little-endian in its first three fields.
	for _, r := range [][2]int{{0, 4}, {4, 6}, {6, 8}} {
		for i, j := r[0], r[1]-1; i < j; i, j = i+1, j-1 {
			b[i], b[j] = b[j], b[i]
		}
	}
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// hostGenID asks the clone's QEMU which VM generation ID it gives.
func hostGenID(ctx context.Context, t *testing.T, l *Local, name string) string {
	t.Helper()
	raw, err := qemu.RunQMP(ctx, filepath.Join(l.home.MachinePath(name), store.QMPSocket), "query-vm-generation-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		GUID string `json:"guid"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return v.GUID
}

// TestCloneSaved boots the tiny guest on a host-only network, saves it,
// and clones it twice: both clones run at once from its memory (its
// process, same pid), with their own MACs (in the guest), host-only
// addresses (their reservations), host names and VM generation IDs (in
// the guest's memory), and ping each other; the source's disk and saved
// state are unchanged and it resumes as it was. Then a clone of a running
// machine, which runs on.
func TestCloneSaved(t *testing.T) {
	image := tinyImage(t)
	needRoot(t)
	l, logs := newLoggedServer(t)
	// c1 is re-identified by the tiny agent's own command, c2 by the
	// script through guest-exec, as a guest with qemu-ga is. c1's tap is
	// muted meanwhile; c2's link is held down instead, as where the
	// host's kernel cannot mute a tap.
	l.scriptReidentify = map[string]bool{"c2": true}
	l.holdLinks = map[string]bool{"c2": true}
	ctx := ctxTimeout(t, 6*time.Minute)
	src := bootTiny(ctx, t, l, "src", image, cloneHardware())
	srcAddr, err := src.IP(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	pid := guestRun(ctx, t, src, "sleep 100000 >/dev/null 2>&1 & echo $!")
	srcHost := guestRun(ctx, t, src, "hostname")
	if err := src.Save(ctx); err != nil {
		t.Fatal(err)
	}
	dir := l.home.MachinePath("src")
	diskSum, stateSum := fileSum(t, filepath.Join(dir, store.DiskFile)), fileSum(t, savedStatePath(dir))

	// Nothing may reach the host-only network as the source while it is
	// saved: no frame from its MAC, no ARP for its address (a resumed
	// guest announces its addresses; a clone's comes out under the
	// clone's MAC once the agent has set it).
	saved, err := src.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	srcMAC, err := net.ParseMAC(saved.HardwareSpec.Network[0].MACAddress)
	if err != nil {
		t.Fatal(err)
	}
	nm, err := l.networks()
	if err != nil {
		t.Fatal(err)
	}
	hostOnly, err := nm.Get("vmfestnet0")
	if err != nil {
		t.Fatal(err)
	}
	// The saved source's network went down with it: up again, to listen
	// on it before the clones run.
	lk, err := nm.Lock(ctx, hostOnly.Name)
	if err != nil {
		t.Fatal(err)
	}
	err = nm.Up(ctx, hostOnly, func(network.Allocation) bool { return true })
	lk.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	sniffed := sniffBridge(t, hostOnly.Bridge, srcMAC, net.ParseIP(srcAddr.IP))
	names := []string{"c1", "c2"}
	clones := make([]Machine, len(names))
	took := make([]time.Duration, len(names))
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			begun := time.Now()
			clones[i], errs[i] = src.Clone(ctx, n)
			took[i] = time.Since(begun)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			if clones[i] != nil {
				log, _ := clones[i].ConsoleLog(ctx)
				t.Logf("console of %s:\n%s", names[i], log)
			}
			t.Fatalf("clone %s: %v", names[i], err)
		}
	}
	t.Logf("two clones of a saved 512 MiB machine at once, each running and re-identified after %v", took)
	// The first clone made the source's memory template; both map its
	// RAM file private.
	tplRAM := filepath.Join(dir, store.TemplateDir, store.TemplateMemoryFile)
	tplState := filepath.Join(dir, store.TemplateDir, store.TemplateStateFile)
	ramInfo, err := os.Stat(tplRAM)
	if err != nil {
		t.Fatal(err)
	}
	if ramInfo.Mode().Perm() != 0o400 {
		t.Fatalf("template RAM file mode %v, want 0400", ramInfo.Mode().Perm())
	}
	ramSum, tplStateSum := fileSum(t, tplRAM), fileSum(t, tplState)

	srcInfo, err := src.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	unique := func(what, v, who string) {
		t.Helper()
		if v == "" {
			t.Fatalf("%s of %s is empty", what, who)
		}
		if prev, ok := seen[what+"="+v]; ok {
			t.Fatalf("%s %s of %s is also %s's", what, v, who, prev)
		}
		seen[what+"="+v] = who
	}
	unique("mac", strings.ToLower(srcInfo.HardwareSpec.Network[0].MACAddress), "src")
	unique("ip", srcAddr.IP, "src")
	unique("host", srcHost, "src")
	unique("genid", srcInfo.GenerationID, "src")
	addrs := make([]string, len(clones))
	for i, c := range clones {
		n := names[i]
		expectState(t, c, Running)
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.ReidentifyPending != "" {
			t.Fatalf("%s: still to be re-identified", n)
		}
		mac := strings.ToLower(info.HardwareSpec.Network[0].MACAddress)
		unique("mac", mac, n)
		if got := guestRun(ctx, t, c, "cat /sys/class/net/eth0/address"); got != mac {
			t.Fatalf("%s: the guest's eth0 has MAC %s, want %s", n, got, mac)
		}
		a, err := c.IP(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = a.IP
		unique("ip", a.IP, n)
		if got := guestRun(ctx, t, c, "ip -4 -o addr show dev eth0"); !strings.Contains(got, " "+a.IP+"/") {
			t.Fatalf("%s: eth0 has %q, want %s", n, got, a.IP)
		}
		host := guestRun(ctx, t, c, "hostname")
		if host != n {
			t.Fatalf("%s: host name %q", n, host)
		}
		// vmfest ssh goes through the clone's own NAT forward, to the
		// address its (migrated) user-mode network leased.
		if got := sshOut(t, ctx, l, c, "hostname"); got != n+"\n" {
			t.Fatalf("%s: ssh hostname = %q", n, got)
		}
		unique("host", host, n)
		if got := guestRun(ctx, t, c, "grep '^127\\.0\\.1\\.1' /etc/hosts"); got != "127.0.1.1 "+n {
			t.Fatalf("%s: /etc/hosts says %q", n, got)
		}
		// The guest's DHCP client leased the clone's address for its
		// new MAC, sending its new name.
		waitLeaseHost(t, l, mac, a.IP, n)
		// Its clock was set, in the re-identification's agent session
		// (the source booted and never had it set).
		clock := "vmfest-reidentify: clock set to [0-9]"
		if l.scriptReidentify[n] {
			clock = "guest-set-time: [0-9]"
		}
		if got := guestRun(ctx, t, c, "grep -c '"+clock+"' /var/log/vmfest-agent.log || :"); got == "0" || got == "" {
			t.Fatalf("%s: the agent's log has no %q (%q)", n, clock, got)
		}
		// Its CRNG was reseeded from the host's randomness, credited as
		// entropy (the tiny guest's kernel has no vmgenid driver to do
		// it): the kernel took RNDADDENTROPY and RNDRESEEDCRNG. (Bytes
		// read from /dev/urandom differ between the clones either way,
		// so their difference below proves little on its own.)
		reseeded := "vmfest-reidentify: 64 bytes mixed in, CRNG reseeded"
		if l.scriptReidentify[n] {
			reseeded = "vmfest-reseed-crng: 32 bytes mixed in, CRNG reseeded"
		}
		if got := guestRun(ctx, t, c, "grep -c '"+reseeded+"' /var/log/vmfest-agent.log || :"); got != "1" {
			t.Fatalf("%s: the agent's log shows %q CRNG reseeds (%q), want 1", n, got, reseeded)
		}
		if want := fmt.Sprintf("machine=%s source=src by-agent=%v", n, !l.scriptReidentify[n]); !strings.Contains(logs.String(), want) {
			t.Fatalf("%s: no log %q", n, want)
		}
		unique("random bytes", guestRun(ctx, t, c, "head -c 16 /dev/urandom | od -An -tx1"), n)
		unique("genid", info.GenerationID, n)
		if got := hostGenID(ctx, t, l, n); got != info.GenerationID {
			t.Fatalf("%s: QEMU gives generation id %s, the record says %s", n, got, info.GenerationID)
		}
		if got := guestGenID(ctx, t, l, c); got != info.GenerationID {
			t.Fatalf("%s: the guest's memory holds generation id %s, want %s", n, got, info.GenerationID)
		}
		// From the source's memory: its process runs on.
		if got := guestRun(ctx, t, c, "kill -0 "+pid+" && echo alive"); got != "alive" {
			t.Fatalf("%s: the source's process %s: %q", n, pid, got)
		}
	}
	if bad := sniffed(); len(bad) > 0 {
		t.Fatalf("the clones spoke as the saved source on its network:\n%s", strings.Join(bad, "\n"))
	}
	// Over host-only, each way.
	guestRun(ctx, t, clones[0], "ping -c 1 -W 10 "+addrs[1])
	guestRun(ctx, t, clones[1], "ping -c 1 -W 10 "+addrs[0])

	// The clones write memory; the template does not change, and they
	// share the pages of it that neither wrote.
	pids := make([]int, len(clones))
	for i, c := range clones {
		guestRun(ctx, t, c, "dd if=/dev/urandom of=/dev/shm/w bs=1M count=16 2>/dev/null; sync; echo ok")
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pids[i] = info.PID
	}
	if fi, err := os.Stat(tplRAM); err != nil || !fi.ModTime().Equal(ramInfo.ModTime()) || fileSum(t, tplRAM) != ramSum || fileSum(t, tplState) != tplStateSum {
		t.Fatalf("the clones changed the memory template (%v)", err)
	}
	// Of the template's pages the clones map (Rss less the copies
	// they made, Anonymous), most are mapped by both (Shared_Clean), so
	// they count half in each one's Pss.
	var sum smapsSum
	deadline := time.Now().Add(30 * time.Second)
	for {
		sum = smapsSum{}
		for _, pid := range pids {
			sum.add(templateMapping(t, pid))
		}
		file := sum.rss - sum.anon
		if file > 0 && sum.sharedClean*2 >= file && sum.pss < sum.rss {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the clones' template mappings are not shared: %+v", sum)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the clones' mappings of the template (kB): %+v", sum)

	if fileSum(t, filepath.Join(dir, store.DiskFile)) != diskSum || fileSum(t, savedStatePath(dir)) != stateSum {
		t.Fatal("a clone changed the source's disk or saved state")
	}
	expectState(t, src, Saved)
	if err := src.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got := guestRun(ctx, t, src, "hostname; kill -0 "+pid+" && echo alive"); got != srcHost+"\nalive" {
		t.Fatalf("the source after its clones: %q", got)
	}
	// Its saved state is gone, and the template with it; the clones run
	// on from their mappings of the unlinked file.
	if _, err := os.Stat(filepath.Join(dir, store.TemplateDir)); err == nil {
		t.Fatal("the source's memory template outlived its saved state")
	}
	for i, c := range clones {
		if got := guestRun(ctx, t, c, "cat /proc/sys/kernel/hostname"); got != names[i] {
			t.Fatalf("%s after its template was removed: %q", names[i], got)
		}
	}

	// A clone of the running source: the source runs on, the clone too.
	logs.Reset()
	begun := time.Now()
	c3, err := src.Clone(ctx, "c3")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("clone of a running source: running and re-identified after %v; %s", time.Since(begun), held(logs.String()))
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "clone") {
			t.Log(line)
		}
	}
	expectState(t, src, Running)
	guestRun(ctx, t, src, "touch /root/after-clone")
	if got := guestRun(ctx, t, c3, "hostname; kill -0 "+pid+" && echo alive"); got != "c3\nalive" {
		t.Fatalf("the clone of the running source: %q", got)
	}
	a3, err := c3.IP(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	guestRun(ctx, t, src, "ping -c 1 -W 10 "+a3.IP)
}

// sniffBridge reads every frame the bridge's own port receives (promiscuous,
// so frames flooded to unknown MACs too) until the returned function is
// called, which returns those from mac or that are ARP packets whose
// sender address is ip, one line each.
func sniffBridge(t *testing.T, bridge string, mac net.HardwareAddr, ip net.IP) func() []string {
	t.Helper()
	ifi, err := net.InterfaceByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	all := uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(all))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: all, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	mreq := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	var (
		mu   sync.Mutex
		bad  []string
		stop bool
		done = make(chan struct{})
	)
	ip4 := ip.To4()
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			mu.Lock()
			s := stop
			mu.Unlock()
			if s {
				return
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n < 14 {
				continue
			}
			f := buf[:n]
			src := net.HardwareAddr(f[6:12])
			arpFrom := len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && net.IP(f[28:32]).Equal(ip4)
			if bytes.Equal(src, mac) || arpFrom {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("%s from %s, type %02x%02x, %d bytes (ARP from the source's address: %v)", time.Now().Format("15:04:05.000"), src, f[12], f[13], n, arpFrom))
				mu.Unlock()
			}
		}
	}()
	var once sync.Once
	finish := func() []string {
		once.Do(func() {
			mu.Lock()
			stop = true
			mu.Unlock()
			<-done
			unix.Close(fd)
		})
		mu.Lock()
		defer mu.Unlock()
		return bad
	}
	t.Cleanup(func() { finish() })
	return finish
}

// smapsSum is a sum of /proc/PID/smaps fields, in kB.
type smapsSum struct{ rss, pss, anon, sharedClean int64 }

func (s *smapsSum) add(o smapsSum) {
	s.rss, s.pss, s.anon, s.sharedClean = s.rss+o.rss, s.pss+o.pss, s.anon+o.anon, s.sharedClean+o.sharedClean
}

// templateMapping sums the smaps fields of process pid's mappings of a
// saved RAM file (a clone's, from its source's memory template).
func templateMapping(t *testing.T, pid int) (sum smapsSum) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			in = strings.Contains(line, "/"+store.SavedMemoryFile)
			continue
		}
		if !in || len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			sum.rss += n
		case "Pss:":
			sum.pss += n
		case "Anonymous:":
			sum.anon += n
		case "Shared_Clean:":
			sum.sharedClean += n
		}
	}
	return sum
}

// held finds how long the source was held in the clone's log.
func held(log string) string {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "source held for a clone") {
			if i := strings.Index(line, "held="); i >= 0 {
				return "source " + strings.Fields(line[i:])[0]
			}
		}
	}
	return "source hold not logged"
}

// syncBuffer is a bytes buffer safe for a logger's concurrent writes.
// newLoggedServer is newTestServer logging at debug level into the
// buffer it returns, for tests that read what vmfest logged.
func newLoggedServer(t *testing.T) (*Local, *syncBuffer) {
	t.Helper()
	l := newTestServer(t)
	logs := &syncBuffer{}
	l.log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return l, logs
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

// TestCloneSavedIDE clones a saved machine whose boot disk is on IDE (the
// default storage of a hardware spec without one): its memory template is
// made (an ide-hd refuses the read-only disk a template's QEMU opens, so
// that QEMU gets a scratch overlay over it) and the clone maps it, with
// no fallback to a whole copy of the saved memory.
func TestCloneSavedIDE(t *testing.T) {
	image := tinyImage(t)
	needRoot(t)
	l, logs := newLoggedServer(t)
	ctx := ctxTimeout(t, 5*time.Minute)
	src := bootTiny(ctx, t, l, "src", image, natHardware())
	if err := src.Save(ctx); err != nil {
		t.Fatal(err)
	}
	dir := l.home.MachinePath("src")
	diskSum := fileSum(t, filepath.Join(dir, store.DiskFile))
	c, err := src.Clone(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "no memory template") {
		t.Fatalf("the clone fell back to a whole copy:\n%s", logs.String())
	}
	if _, err := os.Stat(filepath.Join(dir, store.TemplateDir, store.TemplateMemoryFile)); err != nil {
		t.Fatalf("the source's memory template: %v", err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sum := templateMapping(t, info.PID); sum.rss == 0 {
		t.Fatalf("the clone does not map the template: %+v", sum)
	}
	if got := guestRun(ctx, t, c, "hostname"); got != "c1" {
		t.Fatalf("the clone's host name: %q", got)
	}
	if fileSum(t, filepath.Join(dir, store.DiskFile)) != diskSum {
		t.Fatal("the template or the clone changed the source's disk")
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, store.TemplateTempPrefix+"*")); len(matches) != 0 {
		t.Fatalf("the template's scratch directory is left: %v", matches)
	}
}

// waitLeaseHost waits, within 30 s, until the host-only network's dnsmasq
// has a lease of ip for mac naming host: the name the guest's DHCP client
// sent.
func waitLeaseHost(t *testing.T, l *Local, mac, ip, host string) {
	t.Helper()
	nm, err := l.networks()
	if err != nil {
		t.Fatal(err)
	}
	var leases []network.Lease
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		leases, err = nm.Leases("vmfestnet0")
		if err != nil {
			t.Fatal(err)
		}
		for _, le := range leases {
			if strings.EqualFold(le.MAC, mac) && le.IP == ip && le.Host == host {
				return
			}
		}
	}
	t.Fatalf("no lease of %s for %s naming %s: %+v", ip, mac, host, leases)
}
