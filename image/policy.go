package image

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// FetchPolicy limits where a remote source (and each redirect) may connect.
// The zero value allows every address (the local, trusted user).
type FetchPolicy struct {
	// Restricted refuses loopback, link-local, private (RFC 1918, ULA, CGNAT), multicast, unspecified and other non-global addresses, IPv4-mapped forms included, unless Allow holds them.
	Restricted bool
	// Allow lists prefixes a restricted fetch may still reach (the operator's own mirror).
	Allow []netip.Prefix
}

// ErrBlocked: a restricted fetch was refused an address the policy does
// not allow. Callers under a restricted policy never see it: their error
// is the uniform ErrSource message (see FetchPolicy).
var ErrBlocked = errors.New("address not allowed by the fetch policy")

// nonGlobal lists the special-purpose ranges (IANA's IPv4 and IPv6
// special-purpose registries) that a restricted fetch refuses, beyond
// what netip's own predicates cover.
var nonGlobal = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),   // CGNAT shared space
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("192.88.99.0/24"),  // 6to4 relay anycast
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
	netip.MustParsePrefix("::/96"),           // IPv4-compatible (deprecated)
	netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64
	netip.MustParsePrefix("100::/64"),        // discard-only
	netip.MustParsePrefix("2001::/23"),       // IETF protocol assignments (Teredo, ORCHIDv2, ...)
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("3fff::/20"),       // documentation
	netip.MustParsePrefix("5f00::/16"),       // SRv6 SIDs
	netip.MustParsePrefix("fec0::/10"),       // site-local (deprecated)
}

// Embedding ranges: an IPv6 address that carries an IPv4 one is judged by
// the IPv4 address it reaches.
var (
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// Check says whether a fetch under p may connect to addr: nil, or an
// error wrapping ErrBlocked that names the address and why.
func (p FetchPolicy) Check(addr netip.Addr) error {
	if !p.Restricted {
		return nil
	}
	addr = addr.WithZone("").Unmap()
	for _, pre := range p.Allow {
		if normalPrefix(pre).Contains(addr) {
			return nil
		}
	}
	if why := nonGlobalWhy(addr); why != "" {
		return fmt.Errorf("%w: %s is %s", ErrBlocked, addr, why)
	}
	return nil
}

// normalPrefix turns an IPv4-mapped prefix (::ffff:10.0.0.0/104) into its
// IPv4 form, so that it matches the unmapped addresses Check compares.
func normalPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// nonGlobalWhy says why addr is not a global unicast address, or "" when
// it is one.
func nonGlobalWhy(addr netip.Addr) string {
	switch {
	case !addr.IsValid():
		return "not an address"
	case addr.IsUnspecified():
		return "unspecified"
	case addr.IsLoopback():
		return "loopback"
	case addr.IsLinkLocalUnicast():
		return "link-local"
	case addr.IsMulticast():
		return "multicast"
	case addr.IsPrivate():
		return "private"
	case addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "broadcast"
	}
	if addr.Is6() {
		b := addr.As16()
		switch {
		case nat64.Contains(addr):
			v4 := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
			if why := nonGlobalWhy(v4); why != "" {
				return "NAT64 of a " + why + " address"
			}
			return ""
		case sixToFour.Contains(addr):
			v4 := netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
			if why := nonGlobalWhy(v4); why != "" {
				return "6to4 of a " + why + " address"
			}
			return ""
		}
	}
	for _, p := range nonGlobal {
		if p.Contains(addr) {
			return "in special-purpose range " + p.String()
		}
	}
	return ""
}

// control is a net.Dialer Control function that refuses, before it
// connects, a socket address the policy does not allow. It sees every
// address the resolver returned and every redirect's, as dialled.
func (p FetchPolicy) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot read the address %q being dialled", ErrBlocked, address)
	}
	return p.Check(ap.Addr())
}

// maxRedirects bounds the redirects one request follows.
const maxRedirects = 10

// checkRedirect refuses a redirect to anything but http or https and more
// than maxRedirects of them. The address it leads to is checked when it is
// dialled.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if s := strings.ToLower(req.URL.Scheme); s != "http" && s != "https" {
		return fmt.Errorf("%w: a redirect to a %q URL is refused (only http and https)", ErrBlocked, req.URL.Scheme)
	}
	if len(via) >= maxRedirects {
		return fmt.Errorf("more than %d redirects", maxRedirects)
	}
	return nil
}

// withPolicy returns c (already defaulted) with p in force: its client
// refuses redirects to other schemes and, under a restricted policy, dials
// only addresses p allows, through no proxy (a proxy would reach what the
// policy refuses). A restricted policy replaces the dialing of a
// caller-given client's transport, which must be an *http.Transport.
func (c Config) withPolicy(p FetchPolicy) Config {
	c.policy = p
	client := *c.Client
	prev := client.CheckRedirect
	client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if err := checkRedirect(req, via); err != nil {
			return err
		}
		if prev != nil {
			return prev(req, via)
		}
		return nil
	}
	if p.Restricted {
		var t *http.Transport
		switch rt := client.Transport.(type) {
		case nil:
			t = defaultTransport()
		case *http.Transport:
			t = rt.Clone()
		default:
			client.Transport = refusingTransport{}
			c.Client = &client
			return c
		}
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: p.control}
		t.DialContext = d.DialContext
		t.DialTLSContext = nil
		t.DialTLS = nil //nolint:staticcheck // cleared so that DialContext is used
		t.Dial = nil    //nolint:staticcheck
		t.Proxy = nil
		client.Transport = t
	}
	c.Client = &client
	return c
}

// refusingTransport stands in for a transport a restricted policy cannot
// guard.
type refusingTransport struct{}

func (refusingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, fmt.Errorf("%w: the configured HTTP transport cannot be restricted", ErrBlocked)
}

// errUniform is the only fetch error a caller under a restricted policy
// sees: refused connections, HTTP statuses, blocked addresses and content
// that is no image all read the same, so the server cannot be used to map
// what it can reach.
const errUniform = "the server could not reach it or it is not an image (the server's log has the cause)"

// concealedError is the uniform error a restricted caller sees in place of
// the precise one, which is logged. It matches ErrSource only.
type concealedError struct{ url string }

func (e concealedError) Error() string {
	return fmt.Sprintf("cannot fetch URL %s: %s", e.url, errUniform)
}
func (e concealedError) Is(target error) bool { return target == ErrSource }

// conceal replaces, under a restricted policy, an error about a remote
// source that could tell a caller what the server reaches (a fetch error,
// or what the content was) with the uniform one, and logs the precise
// cause. Other errors, and every error under an open policy, pass as
// they are.
func (p FetchPolicy) conceal(ctx context.Context, log *slog.Logger, src Source, err error) error {
	if err == nil || !p.Restricted || !src.Remote() {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if !errors.Is(err, ErrSource) && !errors.Is(err, ErrNotDiskImage) && !errors.Is(err, ErrBlocked) && !errors.Is(err, ErrDownloadTooLarge) {
		return err
	}
	var already concealedError
	if errors.As(err, &already) {
		return err
	}
	log.WarnContext(ctx, "setup-model: a restricted fetch failed; the caller was told only that it failed",
		"source", src.String(), "err", err)
	return concealedError{url: src.String()}
}
