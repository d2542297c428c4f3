package qga

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
)

// Interface ioctls (linux/sockios.h) and the ifreq they take.
const (
	siocGIFFlags  = 0x8913
	siocSIFFlags  = 0x8914
	siocSIFHWAddr = 0x8924
	arphrdEther   = 1
)

// ifreq is struct ifreq on Linux: a name and a 24-byte union.
type ifreq struct {
	name [syscall.IFNAMSIZ]byte
	data [24]byte
}

// How long changeMACs waits for a DHCP client to end, and restartDHCP for
// a carrier; how often each looks.
const (
	dhcpExitWait = 5 * time.Second
	carrierWait  = 10 * time.Second
	statePoll    = 2 * time.Millisecond
)

// listNICs reads the guest's interfaces from /sys/class/net.
func listNICs() ([]guestNIC, error) {
	const dir = "/sys/class/net"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list the network interfaces: %w", err)
	}
	var out []guestNIC
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		addr, err := os.ReadFile(filepath.Join(p, "address"))
		if err != nil {
			continue
		}
		_, err = os.Lstat(filepath.Join(p, "device"))
		out = append(out, guestNIC{name: e.Name(), mac: strings.ToLower(strings.TrimSpace(string(addr))), physical: err == nil})
	}
	return out, nil
}

// setHostname sets the kernel's host name, /etc/hostname and the
// 127.0.1.1 line of /etc/hosts, and returns the old name. Only the
// kernel's is an error; the files, written in place (they may be
// bind-mounted), are warnings.
func setHostname(name string, warn func(string, ...any)) (string, error) {
	old, _ := os.ReadFile("/proc/sys/kernel/hostname")
	if err := syscall.Sethostname([]byte(name)); err != nil {
		return "", err
	}
	if err := os.WriteFile("/etc/hostname", []byte(name+"\n"), 0o644); err != nil {
		warn("/etc/hostname is not written: %v", err)
	}
	if data, err := os.ReadFile("/etc/hosts"); err == nil {
		if text, changed := rewriteHosts(string(data), name); changed {
			if err := os.WriteFile("/etc/hosts", []byte(text), 0o644); err != nil {
				warn("/etc/hosts is not written: %v", err)
			}
		}
	}
	return strings.TrimSpace(string(old)), nil
}

// changeMACs ends the udhcpc of each interface not managed by the agent's
// own DHCP client, gives each interface its new MAC and waits for the
// udhcpc to end. It returns the clients it ended, to be started again (also
// on error: the host keeps the NICs off their networks either way).
//
// A MAC changes in place where the driver allows it (virtio-net, veth):
// setting a link down and up runs the driver's close and open and the
// stack's whole teardown and setup, code that a resumed clone under TCG
// translates afresh. An in-place change would keep the IPv6 link-local
// address made from the old MAC, which the source and every clone would
// then share, so IPv6 is off on that link while its MAC changes (changeMAC).
// A driver that refuses a change while up (EBUSY, as e1000 does), or
// cycleLink, gets the link set down, the MAC and the link set up.
func changeMACs(changes []nicChange, managed func(string) bool, cycleLink bool, warn func(string, ...any)) ([]*dhcpClient, error) {
	if len(changes) == 0 {
		return nil, nil
	}
	// The interfaces the agent's own DHCP client keeps have no udhcpc:
	// the client follows their new MACs itself. (Scanning /proc for
	// udhcpc costs a resumed clone about 30 ms under TCG.)
	var scan []nicChange
	for _, c := range changes {
		if !managed(c.name) {
			scan = append(scan, c)
		}
	}
	clients, pids := findDHCPClients(scan)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return clients, fmt.Errorf("open a socket to set interfaces: %w", err)
	}
	defer syscall.Close(fd)
	for _, c := range changes {
		if err := changeMAC(fd, c, cycleLink, warn); err != nil {
			return clients, err
		}
	}
	deadline := time.Now().Add(dhcpExitWait)
	for _, pid := range pids {
		if !waitEnded(pid, deadline) {
			return clients, fmt.Errorf("the DHCP client %d did not end in %v", pid, dhcpExitWait)
		}
	}
	return clients, nil
}

// changeMAC gives one interface its new MAC (see changeMACs). Nothing of
// the source's identity may leave with the clone's MAC (the host lets
// frames from it through at once): the interface's IPv4 addresses, the
// source's, go first, and IPv6 is off while the MAC changes, so the
// addresses made from the old MAC go and the link-local address is made
// afresh from the new one when it comes back on.
func changeMAC(fd int, c nicChange, cycleLink bool, warn func(string, ...any)) error {
	v6, err := setIPv6(c.name, false)
	if err != nil {
		warn("%s keeps the IPv6 addresses of its old MAC: %v", c.name, err)
	}
	if v6 {
		defer func() {
			if _, err := setIPv6(c.name, true); err != nil {
				warn("%s: IPv6 does not come back on: %v", c.name, err)
			}
		}()
	}
	if err := dropIPv4(c.name); err != nil {
		return err
	}
	if !cycleLink {
		err := setMAC(fd, c.name, c.mac)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EOPNOTSUPP) {
			return err
		}
	}
	if err := setUp(fd, c.name, false); err != nil {
		return err
	}
	if err := setMAC(fd, c.name, c.mac); err != nil {
		return err
	}
	return setUp(fd, c.name, true)
}

// setIPv6 turns IPv6 on or off on an interface (disable_ipv6) and reports
// whether it changed it; an interface without IPv6 is left.
func setIPv6(ifc string, on bool) (bool, error) {
	p := "/proc/sys/net/ipv6/conf/" + ifc + "/disable_ipv6"
	cur, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	want := "1"
	if on {
		want = "0"
	}
	if strings.TrimSpace(string(cur)) == want {
		return false, nil
	}
	if err := os.WriteFile(p, []byte(want), 0o644); err != nil {
		return false, err
	}
	return true, nil
}

// findDHCPClients finds the udhcpc processes running on the interfaces.
func findDHCPClients(changes []nicChange) ([]*dhcpClient, []int) {
	if len(changes) == 0 {
		return nil, nil
	}
	ents, _ := os.ReadDir("/proc")
	var clients []*dhcpClient
	var pids []int
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "udhcpc" {
			continue
		}
		raw, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		argv := strings.Split(string(bytes.TrimSuffix(raw, []byte{0})), "\x00")
		for _, c := range changes {
			if isUdhcpcOn(argv, c.name) {
				clients = append(clients, &dhcpClient{ifc: c.name, args: argv})
				pids = append(pids, pid)
				break
			}
		}
	}
	return clients, pids
}

// waitEnded waits until pid has ended (gone, or a zombie its parent has not
// reaped yet) or deadline passes.
func waitEnded(pid int, deadline time.Time) bool {
	for {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err != nil {
			return true
		} else if i := bytes.LastIndexByte(st, ')'); i >= 0 && i+2 < len(st) && (st[i+2] == 'Z' || st[i+2] == 'X') {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(statePoll)
	}
}

func newIfreq(name string) (*ifreq, error) {
	var r ifreq
	if len(name) >= len(r.name) {
		return nil, fmt.Errorf("interface name %q is too long", name)
	}
	copy(r.name[:], name)
	return &r, nil
}

func ioctl(fd int, req uintptr, r *ifreq) error {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(r))); e != 0 {
		return e
	}
	return nil
}

// setUp sets the interface up or down.
func setUp(fd int, name string, up bool) error {
	r, err := newIfreq(name)
	if err != nil {
		return err
	}
	if err := ioctl(fd, siocGIFFlags, r); err != nil {
		return fmt.Errorf("read %s's flags: %w", name, err)
	}
	flags := binary.NativeEndian.Uint16(r.data[:])
	if up {
		flags |= syscall.IFF_UP
	} else {
		flags &^= syscall.IFF_UP
	}
	binary.NativeEndian.PutUint16(r.data[:], flags)
	if err := ioctl(fd, siocSIFFlags, r); err != nil {
		state := "down"
		if up {
			state = "up"
		}
		return fmt.Errorf("set %s %s: %w", name, state, err)
	}
	return nil
}

// dropIPv4 removes the interface's IPv4 addresses: they are the source's,
// and once the interface has the clone's MAC the kernel would announce
// them with it (a gratuitous ARP on the MAC change, and on each
// announcement QEMU asks for after the state loads).
func dropIPv4(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list %s's addresses: %w", name, err)
	}
	for _, a := range addrs {
		if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			return fmt.Errorf("remove the source's address %s from %s: %w", a.IPNet, name, err)
		}
	}
	return nil
}

// setMAC gives the interface an Ethernet address.
func setMAC(fd int, name, mac string) error {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("%q is not an Ethernet address", mac)
	}
	r, err := newIfreq(name)
	if err != nil {
		return err
	}
	binary.NativeEndian.PutUint16(r.data[:], arphrdEther)
	copy(r.data[2:], hw)
	if err := ioctl(fd, siocSIFHWAddr, r); err != nil {
		return fmt.Errorf("set %s's MAC to %s: %w", name, mac, err)
	}
	return nil
}

// restartDHCP starts each client again once its interface has a carrier,
// in a session of its own, and reaps it when it ends.
func (a *Agent) restartDHCP(clients []*dhcpClient) {
	for _, c := range clients {
		go func() {
			if !waitCarrier(c.ifc, time.Now().Add(carrierWait)) {
				a.logf("%s: %s has no carrier after %v; its DHCP client starts anyway", ReidentifyCommand, c.ifc, carrierWait)
			}
			path := c.args[0]
			if !strings.Contains(path, "/") {
				if p, err := exec.LookPath(path); err == nil {
					path = p
				}
			}
			cmd := &exec.Cmd{Path: path, Args: c.args, SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
			if err := cmd.Start(); err != nil {
				a.logf("%s: start the DHCP client of %s again: %v", ReidentifyCommand, c.ifc, err)
				return
			}
			cmd.Wait()
		}()
	}
}

// waitCarrier waits until the interface has a carrier and the kernel has
// brought the link into use (operstate up, or unknown for a driver that
// does not say) or deadline passes. The carrier file follows the driver at
// once; operstate follows it only after the kernel's link watch has run,
// which for a lost carrier can be up to a second later.
func waitCarrier(ifc string, deadline time.Time) bool {
	dir := "/sys/class/net/" + ifc + "/"
	for {
		carrier, err1 := os.ReadFile(dir + "carrier")
		st, err2 := os.ReadFile(dir + "operstate")
		if s := strings.TrimSpace(string(st)); err1 == nil && err2 == nil && strings.TrimSpace(string(carrier)) == "1" && (s == "up" || s == "unknown") {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(statePoll)
	}
}
