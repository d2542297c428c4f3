package network

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vmfest/vmfest/internal/netnstest"
	"golang.org/x/sys/unix"
)

// TestMuteProgram checks the program's words against the MAC.
func TestMuteProgram(t *testing.T) {
	for _, tt := range []struct {
		mac     string
		hi, lo  uint32
		wantErr bool
	}{
		{mac: "52:54:00:12:34:56", hi: 0x52540012, lo: 0x3456},
		{mac: "ff:ee:dd:cc:bb:aa", hi: 0xffeeddcc, lo: 0xbbaa},
		{mac: "00:00:5e:00:53:00:00:01", wantErr: true}, // EUI-64
	} {
		mac, err := net.ParseMAC(tt.mac)
		if err != nil {
			t.Fatal(err)
		}
		prog, err := muteProgram(mac)
		if tt.wantErr {
			if err == nil {
				t.Errorf("muteProgram(%s): no error", tt.mac)
			}
			continue
		}
		if err != nil || len(prog) != 6 {
			t.Fatalf("muteProgram(%s) = %v, %v", tt.mac, prog, err)
		}
		if prog[1].K != tt.hi || prog[3].K != tt.lo || prog[4].K != tcActShot || prog[5].K != tcActUnspec {
			t.Errorf("muteProgram(%s) = %+v", tt.mac, prog)
		}
	}
}

// TestMute sends frames from two MACs into a link that is muted for one
// of them, and sees on the bridge beyond it which ones came through:
// before, while and after it is muted. The frames go in at one end of a
// veth pair (as a guest's come out of its tap) and are read from the
// bridge the other end is a port of, which receives them only after the
// port's ingress filters.
func TestMute(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	mustAdd(t, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "mbr"}}, "")
	mustAdd(t, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mport"}, PeerName: "mguest"}, "")
	port, _ := netlink.LinkByName("mport")
	br, _ := netlink.LinkByName("mbr")
	guest, _ := netlink.LinkByName("mguest")
	if err := netlink.LinkSetMaster(port, br); err != nil {
		t.Fatal(err)
	}
	for _, l := range []netlink.Link{br, port, guest} {
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	const etherType = 0x88b5 // local experimental
	open := func(l netlink.Link) int {
		t.Helper()
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(etherType)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(etherType), Ifindex: l.Attrs().Index}); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	tx, rx := open(guest), open(br)
	source, _ := net.ParseMAC("52:54:00:aa:00:01")
	clone, _ := net.ParseMAC("52:54:00:bb:00:02")
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	frame := func(src net.HardwareAddr, seq uint32) []byte {
		b := append(append(append([]byte{}, bcast...), src...), byte(etherType>>8), byte(etherType&0xff))
		b = binary.BigEndian.AppendUint32(b, seq)
		return append(b, make([]byte, 46)...)
	}
	seq := uint32(0)
	// through sends a frame from src and then one from clone (which is
	// never muted) until the clone's comes through, and reports whether
	// src's did: the two go the same way in order, so src's is in front
	// of the clone's or was dropped.
	through := func(src net.HardwareAddr) bool {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			seq++
			mine, marker := seq, seq+1
			seq++
			for _, f := range [][]byte{frame(src, mine), frame(clone, marker)} {
				if err := unix.Sendto(tx, f, 0, &unix.SockaddrLinklayer{Ifindex: guest.Attrs().Index, Halen: 6}); err != nil {
					t.Fatal(err)
				}
			}
			seen := false
			buf := make([]byte, 2048)
			for {
				unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000})
				n, _, err := unix.Recvfrom(rx, buf, 0)
				if err != nil {
					break // lost: send both again
				}
				if n < 18 {
					continue
				}
				got := binary.BigEndian.Uint32(buf[14:18])
				switch {
				case got == mine && bytes.Equal(buf[6:12], src):
					seen = true
				case got == marker:
					return seen
				}
			}
		}
		t.Fatal("no frame from the clone's MAC came through in 10 s")
		return false
	}
	if !through(source) {
		t.Fatal("a frame from the source's MAC did not come through before the link was muted")
	}
	if err := mute(port, source); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if through(source) {
			t.Fatal("a frame from the muted MAC came through")
		}
	}
	// A second mute of the same link fails, and leaves the first.
	if err := mute(port, clone); err == nil {
		t.Error("a second mute of the link: no error")
	}
	if through(source) {
		t.Fatal("a frame from the muted MAC came through after a second mute failed")
	}
	found, err := unmute(port)
	if err != nil || !found {
		t.Fatalf("unmute = %v, %v", found, err)
	}
	if !through(source) {
		t.Fatal("a frame from the source's MAC did not come through after unmute")
	}
	if qs, err := netlink.QdiscList(port); err != nil {
		t.Fatal(err)
	} else {
		for _, q := range qs {
			if q.Type() == "clsact" {
				t.Errorf("the clsact qdisc is still there after unmute")
			}
		}
	}
	if found, err := unmute(port); err != nil || found {
		t.Errorf("unmute of an unmuted link = %v, %v", found, err)
	}
}

// TestUnmuteRefusesOthers: Unmute touches vmfest's taps only.
func TestUnmuteRefusesOthers(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	m := newManager(t)
	id, err := m.stateID(true)
	if err != nil {
		t.Fatal(err)
	}
	mustAdd(t, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uveth"}, PeerName: "uvethp"}, "")
	for _, tap := range []struct{ name, alias string }{{"utap-0", ""}, {"utap-1", "vmfest:someoneelse:tap"}, {"utap-2", "vmfest:" + id + ":tap"}} {
		if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tap.name}, Mode: netlink.TUNTAP_MODE_TAP}); err != nil {
			t.Fatal(err)
		}
		if tap.alias != "" {
			l, _ := netlink.LinkByName(tap.name)
			netlink.LinkSetAlias(l, tap.alias)
		}
	}
	src, _ := net.ParseMAC("52:54:00:aa:00:01")
	for _, name := range []string{"uveth", "utap-0", "utap-1"} {
		l, _ := netlink.LinkByName(name)
		if err := mute(l, src); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Unmute(name); !errors.Is(err, ErrForeignLink) {
			t.Errorf("Unmute(%s) = %v, want ErrForeignLink", name, err)
		}
		if fs, _ := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS); len(fs) != 1 {
			t.Errorf("Unmute(%s) changed its filters: %d left", name, len(fs))
		}
	}
	own, _ := netlink.LinkByName("utap-2")
	if err := mute(own, src); err != nil {
		t.Fatal(err)
	}
	if found, err := m.Unmute("utap-2"); err != nil || !found {
		t.Errorf("Unmute of vmfest's muted tap = %v, %v", found, err)
	}
	if found, err := m.Unmute("utap-gone"); err != nil || found {
		t.Errorf("Unmute of a tap that is gone = %v, %v", found, err)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
