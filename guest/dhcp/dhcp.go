//go:build linux

// Package dhcp is the tiny guest's DHCPv4 client, run by its agent: it
// keeps each Ethernet interface whose name matches a pattern addressed by
// DHCP, the job udhcpc and its shell script had.
//
// It runs in the agent's own process and follows the kernel's link events,
// so it starts an exchange as soon as an interface has a carrier, and again
// whenever the interface's MAC changes (once it has a carrier). A carrier
// that comes back with the same MAC keeps the lease, as udhcpc did. That is how a clone resumed from its source's memory gets its own
// address: the agent gives the NIC the clone's MAC while the host holds the
// link down, the host plugs the link in, and the exchange follows with the
// clone's MAC and host name, without a program started. Under TCG a
// resumed guest translates every program it starts afresh, and udhcpc's
// start, its scripts and their ip commands took about 190 ms of a clone's
// 400.
//
// The exchange itself is github.com/insomniacslk/dhcp's nclient4; the
// address, routes and MTU are set through netlink
// (github.com/vishvananda/netlink). The library takes its transaction IDs
// from getrandom and spins until the kernel's CRNG is initialised, seconds
// into a boot under TCG, unless the process's environment has
// UROOT_NOHWRNG set (then it reads /dev/urandom): the agent sets it.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Config says which interfaces to keep addressed and how.
type Config struct {
	// Pattern is a filepath.Match pattern of interface names, e.g. "eth*".
	Pattern string
	// Hostname is the name sent with each request (option 12); by default
	// the kernel's host name at the time of the request.
	Hostname func() string
	// ResolvConf is the file the name servers of a lease go to; by
	// default /etc/resolv.conf. It is replaced whole, by a rename.
	ResolvConf string
	// Logf receives what the client does.
	Logf func(format string, args ...any)
	// FirstTimeout is how long the first try of an exchange waits for an
	// answer; each retry waits twice as long. By default 250 ms.
	FirstTimeout time.Duration
}

// Client keeps the interfaces of a Config addressed (see Run).
type Client struct {
	cfg Config
}

// New returns a client for cfg.
func New(cfg Config) *Client {
	if cfg.Hostname == nil {
		cfg.Hostname = func() string {
			h, _ := os.Hostname()
			return h
		}
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.FirstTimeout <= 0 {
		cfg.FirstTimeout = 250 * time.Millisecond
	}
	return &Client{cfg: cfg}
}

// Matches says whether a client of pattern (one of Config's) keeps the
// interface name addressed. The agent's re-identification leaves those
// interfaces' DHCP to the client.
func Matches(pattern, name string) bool {
	ok, _ := filepath.Match(pattern, name)
	return ok && pattern != ""
}

// Run keeps each Ethernet interface matching the pattern addressed until
// ctx ends: those there now and those that appear later. It sets each one
// up. It returns an error only if it cannot follow the kernel's link
// events.
func (c *Client) Run(ctx context.Context) error {
	if _, err := filepath.Match(c.cfg.Pattern, ""); err != nil || c.cfg.Pattern == "" {
		return fmt.Errorf("DHCP: interface pattern %q: want a pattern such as eth*", c.cfg.Pattern)
	}
	// Deferred in this order so that the keepers' context ends before
	// Run waits for them, whichever way Run returns.
	var wg sync.WaitGroup
	defer wg.Wait()
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan linkEvent, 64)
	failed := make(chan error, 1)
	go func() {
		failed <- linkEvents(lctx, func(ev linkEvent) {
			select {
			case events <- ev:
			case <-lctx.Done():
			}
		})
	}()
	links := map[int]*link{}
	for {
		var ev linkEvent
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("DHCP: %w", err)
		case ev = <-events:
		}
		l, ok := links[ev.index]
		if ev.removed {
			if ok {
				l.stop()
				delete(links, ev.index)
			}
			continue
		}
		if !ev.ether || !Matches(c.cfg.Pattern, ev.state.name) {
			continue
		}
		if !ok {
			kctx, stop := context.WithCancel(lctx)
			l = &link{index: ev.index, notify: make(chan struct{}, 1), stop: stop}
			links[ev.index] = l
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.keep(kctx, l)
			}()
		} else if l.state() == ev.state {
			// The same state again (a NIC's announcement after a
			// migration, statistics): nothing to do.
			continue
		}
		l.set(ev.state)
	}
}

// linkState is what an interface's latest link event says.
type linkState struct {
	name    string
	mac     string
	up      bool
	carrier bool // a carrier, and the kernel has brought the link into use
}

// link is an interface being kept addressed: its latest state, and a
// signal that a new one came.
type link struct {
	index  int
	mu     sync.Mutex
	latest linkState
	notify chan struct{}
	stop   context.CancelFunc
}

func (l *link) set(st linkState) {
	l.mu.Lock()
	l.latest = st
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

func (l *link) state() linkState {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.latest
}

// keep keeps an interface addressed, following its states, until ctx ends.
// An exchange or renewal in progress is abandoned when a new state comes
// (a new MAC, a lost carrier): the loop starts over from the new state.
// A lease is taken anew only for a new MAC.
func (c *Client) keep(ctx context.Context, l *link) {
	var (
		cur     linkState
		lease   *nclient4.Lease
		leased  string // the MAC the lease is for
		renewAt time.Time
		expires time.Time
		failed  int // exchanges in a row without an answer
	)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		st := l.state()
		if cur.name == "" && !st.up {
			c.setUp(st.name)
		}
		if st.mac != cur.mac || (st.carrier && !cur.carrier) {
			failed = 0 // a new link: try at once
		}
		cur = st
		var wake <-chan time.Time
		switch {
		case !cur.up || !cur.carrier:
			// Nothing to do until a carrier.
		case lease == nil || leased != cur.mac:
			wake = after(timer, backoff(failed))
		default:
			wake = after(timer, time.Until(renewAt))
		}
		select {
		case <-ctx.Done():
			return
		case <-l.notify:
			continue
		case <-wake:
		}
		// Work until done or a new state comes.
		wctx, cancel := context.WithCancel(ctx)
		interrupted := make(chan bool, 1)
		go func() {
			select {
			case <-l.notify:
				cancel()
				interrupted <- true
			case <-wctx.Done():
				interrupted <- false
			}
		}()
		renewing := lease != nil && leased == cur.mac
		var nl *nclient4.Lease
		var err error
		if renewing {
			nl, err = c.renew(wctx, cur, lease)
		} else {
			nl, err = c.exchange(wctx, cur)
		}
		cancel()
		if <-interrupted || ctx.Err() != nil {
			continue
		}
		switch {
		case err == nil:
			if !renewing {
				how := ""
				if nl.Offer == nl.ACK {
					how = " (rapid commit)"
				}
				c.cfg.Logf("DHCP: %s: leased %s for %s%s", cur.name, nl.ACK.YourIPAddr, cur.mac, how)
			}
			failed = 0
			lease, leased = nl, cur.mac
			renewAt, expires = renewTime(nl), expiry(nl)
			c.apply(cur.name, l.index, nl)
		case !renewing:
			failed++
			c.cfg.Logf("DHCP: %s: no lease for %s: %v", cur.name, cur.mac, err)
		case time.Now().After(expires):
			c.cfg.Logf("DHCP: %s: the lease of %s expired: %v", cur.name, lease.ACK.YourIPAddr, err)
			lease = nil
		default:
			var nak *nclient4.ErrNak
			if errors.As(err, &nak) {
				c.cfg.Logf("DHCP: %s: the server refused to renew %s; asking anew", cur.name, lease.ACK.YourIPAddr)
				lease = nil
			} else {
				renewAt = time.Now().Add(max(time.Until(expires)/2, time.Second))
			}
		}
	}
}

// after resets t to fire after d and returns its channel.
func after(t *time.Timer, d time.Duration) <-chan time.Time {
	t.Reset(max(d, 0))
	return t.C
}

// backoff is the pause before an exchange after failed ones in a row: none
// before the first, then 1, 2, 4 ... up to 60 s.
func backoff(failed int) time.Duration {
	if failed == 0 {
		return 0
	}
	return min(time.Second<<min(failed-1, 6), time.Minute)
}

// renewTime is when to renew l (T1, half the lease by default).
func renewTime(l *nclient4.Lease) time.Time {
	d := l.ACK.IPAddressLeaseTime(time.Hour)
	return l.CreationTime.Add(l.ACK.IPAddressRenewalTime(d / 2))
}

// expiry is when l ends.
func expiry(l *nclient4.Lease) time.Time {
	return l.CreationTime.Add(l.ACK.IPAddressLeaseTime(time.Hour))
}

// newClient opens a DHCP client on the interface as it is now (its MAC is
// read here).
func (c *Client) newClient(st linkState) (*nclient4.Client, error) {
	return nclient4.New(st.name, nclient4.WithTimeout(c.cfg.FirstTimeout), nclient4.WithRetry(5))
}

// exchange gets a lease: discover, offer, request, acknowledge; or, from a
// server that takes the discover's rapid-commit option (RFC 4039, as
// vmfest's dnsmasq does), discover and acknowledge.
func (c *Client) exchange(ctx context.Context, st linkState) (*nclient4.Lease, error) {
	cl, err := c.newClient(st)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	mods := append(c.options(), dhcpv4.WithOption(dhcpv4.OptGeneric(dhcpv4.OptionRapidCommit, nil)))
	discover, err := dhcpv4.NewDiscovery(cl.InterfaceAddr(), mods...)
	if err != nil {
		return nil, err
	}
	reply, err := cl.SendAndRead(ctx, nclient4.DefaultServers, discover, nclient4.IsMessageType(dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeAck))
	if err != nil {
		return nil, fmt.Errorf("no answer to the discover: %w", err)
	}
	if reply.MessageType() == dhcpv4.MessageTypeAck {
		if reply.Options.Has(dhcpv4.OptionRapidCommit) {
			return &nclient4.Lease{Offer: reply, ACK: reply, CreationTime: time.Now()}, nil
		}
		return nil, fmt.Errorf("the server %s acknowledged a discover without rapid commit", reply.ServerIdentifier())
	}
	return cl.RequestFromOffer(ctx, reply, c.options()...)
}

// renew renews lease.
func (c *Client) renew(ctx context.Context, st linkState, lease *nclient4.Lease) (*nclient4.Lease, error) {
	cl, err := c.newClient(st)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return cl.Renew(ctx, lease, c.options()...)
}

// options are those every request carries: the options it applies, and
// the host name.
func (c *Client) options() []dhcpv4.Modifier {
	mods := []dhcpv4.Modifier{dhcpv4.WithRequestedOptions(
		dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
		dhcpv4.OptionDomainName, dhcpv4.OptionBroadcastAddress, dhcpv4.OptionInterfaceMTU)}
	if h := c.cfg.Hostname(); h != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(h)))
	}
	return mods
}

// setUp sets the interface up.
func (c *Client) setUp(name string) {
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		c.cfg.Logf("DHCP: set %s up: %v", name, err)
	}
}

// apply gives the interface the lease's address (and drops its other IPv4
// addresses), MTU, default routes and name servers. What fails is logged.
func (c *Client) apply(name string, index int, l *nclient4.Lease) {
	logf := func(format string, args ...any) {
		c.cfg.Logf("DHCP: %s: "+format, append([]any{name}, args...)...)
	}
	// The calls below need only the index: no link lookup, whose full
	// decode a resumed clone would translate afresh under TCG.
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: index, Name: name}}
	ack := l.ACK
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	want := &netlink.Addr{IPNet: &net.IPNet{IP: ack.YourIPAddr.To4(), Mask: mask}}
	if b := ack.BroadcastAddress(); b != nil {
		want.Broadcast = b
	} else {
		want.Broadcast = broadcast(want.IPNet)
	}
	have, _ := netlink.AddrList(link, unix.AF_INET)
	for _, a := range have {
		if !a.IPNet.IP.Equal(want.IP) || a.IPNet.String() != want.IPNet.String() {
			if err := netlink.AddrDel(link, &a); err != nil {
				logf("remove %s: %v", a.IPNet, err)
			}
		}
	}
	if err := netlink.AddrReplace(link, want); err != nil {
		logf("add %s: %v", want.IPNet, err)
		return
	}
	if b := ack.Options.Get(dhcpv4.OptionInterfaceMTU); len(b) == 2 {
		if mtu := int(b[0])<<8 | int(b[1]); mtu >= 576 {
			if cur, err := netlink.LinkByIndex(index); err == nil && cur.Attrs().MTU != mtu {
				if err := netlink.LinkSetMTU(cur, mtu); err != nil {
					logf("MTU %d: %v", mtu, err)
				}
			}
		}
	}
	for i, gw := range ack.Router() {
		r := &netlink.Route{LinkIndex: index, Gw: gw, Priority: i}
		if err := netlink.RouteReplace(r); err != nil {
			logf("default route via %s: %v", gw, err)
		}
	}
	if dns := ack.DNS(); len(dns) > 0 {
		if err := writeResolvConf(c.cfg.ResolvConf, ack.DomainName(), dns); err != nil {
			logf("name servers: %v", err)
		}
	}
	logf("address %s", want.IPNet)
}

// broadcast is the broadcast address of n.
func broadcast(n *net.IPNet) net.IP {
	ip := n.IP.To4()
	b := make(net.IP, len(ip))
	for i := range ip {
		b[i] = ip[i] | ^n.Mask[i]
	}
	return b
}

// writeResolvConf replaces path with a resolv.conf naming servers (and
// searching domain).
func writeResolvConf(path, domain string, servers []net.IP) error {
	var b strings.Builder
	if domain != "" {
		fmt.Fprintf(&b, "search %s\n", domain)
	}
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
