//go:build linux

package dhcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// linkEvent is one link message from the kernel: an interface's index,
// name, MAC and flags, or its removal.
type linkEvent struct {
	index   int
	removed bool
	ether   bool
	state   linkState
}

// linkEvents reads the kernel's link messages: first one per interface
// there is (an RTM_GETLINK dump), then each change (RTMGRP_LINK). It
// decodes only the header, the flags, the name and the MAC, with the
// standard library's netlink parsing: a resumed guest gets a link message
// from each NIC several times in its first second (virtio-net's
// announcements after a migration), and under TCG a full decode of each
// (every attribute, the statistics) is code the guest translates afresh.
// send receives the events in order; linkEvents returns when ctx ends or
// the socket fails.
func linkEvents(ctx context.Context, send func(linkEvent)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("open a netlink socket: %w", err)
	}
	// A non-blocking descriptor goes to the runtime's poller: Close ends
	// a Read in progress.
	f := os.NewFile(uintptr(fd), "netlink")
	defer f.Close()
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err != nil {
		return fmt.Errorf("follow the link events: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	// The links there are; changes meanwhile come on f after them.
	dump, err := syscall.NetlinkRIB(syscall.RTM_GETLINK, syscall.AF_UNSPEC)
	if err != nil {
		return fmt.Errorf("list the links: %w", err)
	}
	if err := decodeLinks(dump, send); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, unix.ENOBUFS) {
			// Messages were lost: read the whole state again.
			if dump, err = syscall.NetlinkRIB(syscall.RTM_GETLINK, syscall.AF_UNSPEC); err == nil {
				err = decodeLinks(dump, send)
			}
			if err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("read the link events: %w", err)
		}
		if err := decodeLinks(buf[:n], send); err != nil {
			return err
		}
	}
}

// decodeLinks passes on each link message in b.
func decodeLinks(b []byte, send func(linkEvent)) error {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return fmt.Errorf("decode the link events: %w", err)
	}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != syscall.RTM_NEWLINK && m.Header.Type != syscall.RTM_DELLINK {
			continue
		}
		if len(m.Data) < syscall.SizeofIfInfomsg {
			continue
		}
		info := (*syscall.IfInfomsg)(unsafe.Pointer(&m.Data[0]))
		ev := linkEvent{index: int(info.Index), removed: m.Header.Type == syscall.RTM_DELLINK, ether: info.Type == syscall.ARPHRD_ETHER}
		flags := info.Flags
		ev.state.up = flags&unix.IFF_UP != 0
		ev.state.carrier = flags&unix.IFF_LOWER_UP != 0 && flags&unix.IFF_RUNNING != 0
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			continue
		}
		for _, a := range attrs {
			switch a.Attr.Type {
			case syscall.IFLA_IFNAME:
				ev.state.name = string(bytes.TrimRight(a.Value, "\x00"))
			case syscall.IFLA_ADDRESS:
				ev.state.mac = net.HardwareAddr(a.Value).String()
			}
		}
		send(ev)
	}
	return nil
}
