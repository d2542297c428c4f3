package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
)

// DefaultURI is the libvirt connection a driver uses unless told otherwise.
const DefaultURI = "qemu:///system"

// DefaultSocket is libvirtd's socket for qemu:///system.
const DefaultSocket = "/run/libvirt/libvirt-sock"

// endpoint is where a URI's libvirtd listens and which driver URI it is
// asked for once connected.
type endpoint struct {
	socket string
	name   golibvirt.ConnectURI
}

// parseURI accepts local qemu URIs: qemu:///system (socket
// /run/libvirt/libvirt-sock) and any qemu[+unix]:///… with ?socket=PATH.
// Remote transports are refused: the driver reads the machine directory
// and libvirt's pidfile on this host.
func parseURI(s string) (endpoint, error) {
	u, err := url.Parse(s)
	if err != nil {
		return endpoint{}, fmt.Errorf("libvirt URI %q: %w", s, err)
	}
	scheme, transport, _ := strings.Cut(u.Scheme, "+")
	if scheme != "qemu" || (transport != "" && transport != "unix") || u.Host != "" {
		return endpoint{}, fmt.Errorf("libvirt URI %q: allowed: qemu:///system or a local qemu+unix URI (the machine's files must be on this host)", s)
	}
	sock := u.Query().Get("socket")
	if sock == "" {
		if u.Path != "/system" {
			return endpoint{}, fmt.Errorf("libvirt URI %q: only qemu:///system has a known socket; add ?socket=PATH", s)
		}
		sock = DefaultSocket
	}
	return endpoint{socket: sock, name: golibvirt.RemoteURI(u)}, nil
}

// conn is one connection to libvirtd, bound to a context: when the context
// ends, the socket is closed and the call in flight fails.
type conn struct {
	*golibvirt.Libvirt
	ctx  context.Context
	stop func() bool
	once sync.Once
}

// dial connects to libvirtd; the connection lives until close or until ctx
// ends.
func dial(ctx context.Context, ep endpoint) (*conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", ep.socket)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("libvirt: connect to libvirtd at %s: %w", ep.socket, ctx.Err())
		}
		return nil, fmt.Errorf("libvirt: cannot reach libvirtd at %s: %w; is libvirtd running?", ep.socket, err)
	}
	l := golibvirt.NewWithDialer(dialers.NewAlreadyConnected(nc))
	c := &conn{Libvirt: l, ctx: ctx}
	c.stop = context.AfterFunc(ctx, func() { nc.Close() })
	if err := l.ConnectToURI(ep.name); err != nil {
		c.stop()
		nc.Close()
		return nil, c.wrap(fmt.Errorf("libvirt: open %s at %s: %w", ep.name, ep.socket, err))
	}
	return c, nil
}

// wrap says the context's error when a call failed because it ended.
func (c *conn) wrap(err error) error {
	if err != nil && c.ctx.Err() != nil && !errors.Is(err, c.ctx.Err()) {
		return fmt.Errorf("%w (%w)", c.ctx.Err(), err)
	}
	return err
}

// close ends the connection.
func (c *conn) close() {
	c.once.Do(func() {
		c.stop()
		c.Disconnect() //nolint:errcheck // the socket goes either way
	})
}

// isCode says whether err is a libvirt error with that number.
func isCode(err error, code golibvirt.ErrorNumber) bool {
	var e golibvirt.Error
	return errors.As(err, &e) && e.Code == uint32(code)
}
