package network

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmfest/vmfest/store"
)

// LeaseTime is the DHCP lease time dnsmasq gives. A lease's grant time is
// its expiry less this, which tells a lease of the current run from one of
// an earlier run.
const LeaseTime = time.Hour

// DnsmasqBinary is the dnsmasq executable (Debian's dnsmasq-base).
const DnsmasqBinary = "dnsmasq"

// DnsmasqConfig renders the dnsmasq configuration of a host-only network
// whose files live in dir, with a reservation for each allocation. dnsmasq
// serves DHCP only (port=0: no DNS), only on the network's bridge, and only
// to the MACs vmfest reserved an address for (dhcp-range ... static). It
// offers no router and no DNS server: a host-only network leads nowhere but
// to the host, and the guest's default route stays on its NAT adapter.
//
// The reservations are in the configuration itself, not in a
// dhcp-hostsfile: dnsmasq reads its configuration as root before it drops
// to nobody, and nobody cannot read files under a state directory such as
// /root/.vmfest. A change of reservations restarts it.
func DnsmasqConfig(n Network, dir string, allocs []Allocation) ([]byte, error) {
	p, err := n.Prefix()
	if err != nil {
		return nil, fmt.Errorf("network %s: subnet %q: %w", n.Name, n.Subnet, err)
	}
	mask := net4Mask(p.Bits())
	var b bytes.Buffer
	fmt.Fprintf(&b, "# vmfest host-only network %s; written by vmfest, rewritten on every change\n", n.Name)
	fmt.Fprintf(&b, "interface=%s\n", n.Bridge)
	b.WriteString("bind-interfaces\nexcept-interface=lo\nport=0\nno-resolv\nno-hosts\n")
	fmt.Fprintf(&b, "dhcp-range=%s,static,%s,%ds\n", p.Addr(), mask, int(LeaseTime.Seconds()))
	// The only DHCP server on its bridge, so it may answer a discover
	// that asks for it (RFC 4039) with the lease itself: one exchange
	// instead of two, which a clone resumed under TCG pays for in
	// milliseconds of guest code (the tiny guest's client asks).
	b.WriteString("dhcp-authoritative\ndhcp-rapid-commit\n")
	b.WriteString("dhcp-option=option:router\ndhcp-option=option:dns-server\n")
	fmt.Fprintf(&b, "dhcp-leasefile=%s\n", filepath.Join(dir, LeasesFile))
	fmt.Fprintf(&b, "pid-file=%s\n", filepath.Join(dir, DnsmasqPID))
	fmt.Fprintf(&b, "log-facility=%s\n", filepath.Join(dir, DnsmasqLog))
	b.Write(dhcpHosts(allocs))
	return b.Bytes(), nil
}

func net4Mask(bits int) string {
	m := uint32(0xffffffff) << (32 - bits)
	return fmt.Sprintf("%d.%d.%d.%d", m>>24, m>>16&0xff, m>>8&0xff, m&0xff)
}

// Lease is one line of dnsmasq's lease file.
type Lease struct {
	MAC     string
	IP      string
	Host    string
	Expires time.Time
}

// Granted is when the lease was given or last renewed.
func (l Lease) Granted() time.Time { return l.Expires.Add(-LeaseTime) }

// ParseLeases reads dnsmasq's lease file format: "expiry mac ip host
// client-id" per line.
func ParseLeases(data []byte) []Lease {
	var out []Lease
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		exp, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		out = append(out, Lease{Expires: time.Unix(exp, 0), MAC: strings.ToLower(f[1]), IP: f[2], Host: f[3]})
	}
	return out
}

// Leases returns the current leases of a host-only network.
func (m *Manager) Leases(name string) ([]Lease, error) {
	data, err := os.ReadFile(filepath.Join(m.Path(name), LeasesFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("network %s: %w", name, err)
	}
	return ParseLeases(data), nil
}

// dnsmasqPID returns the pid of the network's running dnsmasq, or 0. The
// pid is trusted only if that process runs dnsmasq with this network's
// configuration (pids are reused) and is not a zombie.
func (m *Manager) dnsmasqPID(n Network) int {
	dir := m.Path(n.Name)
	data, err := os.ReadFile(filepath.Join(dir, DnsmasqPID))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0
	}
	if !processRuns(pid) {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(filepath.Join(dir, DnsmasqConf))) {
		return 0
	}
	return pid
}

// processRuns reports whether pid is a live process (not a zombie).
func processRuns(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(stat, ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z' && stat[i+2] != 'X'
}

// DnsmasqRunning reports the pid of the network's dnsmasq, 0 if none runs.
func (m *Manager) DnsmasqRunning(n Network) int { return m.dnsmasqPID(n) }

func (m *Manager) startDnsmasq(ctx context.Context, n Network) error {
	dir := m.Path(n.Name)
	// dnsmasq opens its log, leases and pidfile as root, then drops to
	// nobody; the log is kept to the current run.
	os.Remove(filepath.Join(dir, DnsmasqLog))
	// dnsmasq daemonizes and exits once the daemon is set up, with a
	// non-zero status and a message if that failed.
	out, err := exec.CommandContext(ctx, DnsmasqBinary, "--conf-file="+filepath.Join(dir, DnsmasqConf)).CombinedOutput()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("start dnsmasq for network %s: %w (install Debian's dnsmasq-base)", n.Name, err)
		}
		return fmt.Errorf("start dnsmasq for network %s: %w: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// stopDnsmasq ends the network's dnsmasq, if one runs, and waits for it.
func (m *Manager) stopDnsmasq(ctx context.Context, n Network) error {
	pid := m.dnsmasqPID(n)
	if pid == 0 {
		os.Remove(filepath.Join(m.Path(n.Name), DnsmasqPID))
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for processRuns(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			deadline = time.Now().Add(5 * time.Second)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stop dnsmasq %d of network %s: %w", pid, n.Name, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	os.Remove(filepath.Join(m.Path(n.Name), DnsmasqPID))
	return nil
}

// writeConfig writes the network's dnsmasq configuration and reports
// whether it changed.
func (m *Manager) writeConfig(n Network, allocs []Allocation) (bool, error) {
	path := filepath.Join(m.Path(n.Name), DnsmasqConf)
	conf, err := DnsmasqConfig(n, m.Path(n.Name), allocs)
	if err != nil {
		return false, err
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, conf) {
		return false, nil
	}
	if err := store.WriteFileAtomic(path, conf, 0o644); err != nil {
		return false, fmt.Errorf("network %s: %w", n.Name, err)
	}
	return true, nil
}

// reloadHosts gives a running dnsmasq the reservations (it is restarted:
// see DnsmasqConfig). Without one it does nothing: Up writes the
// configuration from the allocations before it starts dnsmasq, so creating
// a machine on a network that is down (the common case) costs no write of
// it. The caller holds the network's lock.
func (m *Manager) reloadHosts(ctx context.Context, n Network, allocs []Allocation) error {
	if m.dnsmasqPID(n) == 0 {
		return nil
	}
	changed, err := m.writeConfig(n, allocs)
	if err != nil || !changed {
		return err
	}
	if err := m.stopDnsmasq(ctx, n); err != nil {
		return err
	}
	return m.startDnsmasq(ctx, n)
}

// filterLeases keeps only the leases of the given MACs. dnsmasq must not
// be running (it rewrites the file from memory).
func (m *Manager) filterLeases(n Network, keep map[string]bool) (changed bool, err error) {
	path := filepath.Join(m.Path(n.Name), LeasesFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && !keep[strings.ToLower(f[1])] {
			changed = true
			continue
		}
		out.WriteString(line)
	}
	if !changed {
		return false, nil
	}
	return true, store.WriteFileAtomic(path, out.Bytes(), 0o644)
}

// staleLeases reports whether the lease file holds a MAC not in keep.
func (m *Manager) staleLeases(n Network, keep map[string]bool) bool {
	leases, _ := m.Leases(n.Name)
	for _, l := range leases {
		if !keep[l.MAC] {
			return true
		}
	}
	return false
}
