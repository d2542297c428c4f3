package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Muting. A clone resumed from its source's memory runs a guest that still
// has the source's MAC on each NIC, and its source's address, until its
// agent gives it the clone's. Meanwhile whatever it sends from the
// source's MAC (a TCP retransmission, the gratuitous ARPs and IPv6
// announcements a NIC makes after its state loads) would reach the
// source's network as the source: the bridge would learn the source's MAC
// on the clone's port, and its neighbours the clone as the source.
//
// So the clone's tap drops every frame the guest sends from the source's
// MAC: a classic BPF program on the tap's ingress (its clsact qdisc; cls_bpf
// in direct-action mode, so no action module is needed). The guest's link
// stays up, so once the agent has given a NIC the clone's MAC its DHCP
// client leases at once, without the carrier going up and down, which
// under TCG takes a resumed guest about 100 ms. The filter lives and dies
// with the tap (QEMU's: it goes when QEMU exits), so a crash leaves
// nothing behind; Unmute removes it once the guest has the clone's MACs.

// vmfest's filter among a tap's ingress filters: its priority and handle
// (a classic BPF filter has no name the kernel reports back).
const (
	mutePrio   = 1
	muteHandle = 0x766d6601 // "vmf" 1
)

// tcActShot and tcActUnspec are the verdicts of a direct-action classifier
// (linux/pkt_cls.h): drop the frame, or go on as if no filter matched.
const (
	tcActShot   = 2
	tcActUnspec = 0xffffffff
)

// ErrMuteUnsupported is wrapped by Mute's error on a kernel without the
// clsact qdisc or the bpf classifier: the caller keeps the guest off the
// network some other way.
var ErrMuteUnsupported = errors.New("this kernel cannot filter a tap's frames (clsact and cls_bpf)")

// muteProgram is the classic BPF program that drops frames whose source
// MAC (bytes 6 to 11; cls_bpf runs at ingress with the Ethernet header in
// front) is mac, and lets every other frame go on.
func muteProgram(mac net.HardwareAddr) ([]bpf.RawInstruction, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("%q is not an Ethernet address", mac)
	}
	hi := uint32(mac[0])<<24 | uint32(mac[1])<<16 | uint32(mac[2])<<8 | uint32(mac[3])
	lo := uint32(mac[4])<<8 | uint32(mac[5])
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 6, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: hi, SkipFalse: 3},
		bpf.LoadAbsolute{Off: 10, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: lo, SkipFalse: 1},
		bpf.RetConstant{Val: tcActShot},
		bpf.RetConstant{Val: tcActUnspec},
	})
}

// Mute sets the tap of NIC slot, which the hypervisor has made and Plug
// has not yet put into its bridge, to drop every frame the guest sends
// from mac (see above), and marks it as vmfest's. A slot without a tap
// (nat, none) is refused; the error wraps ErrMuteUnsupported where the
// kernel cannot filter.
func (a *Attachment) Mute(slot int, mac net.HardwareAddr) error {
	if slot < 0 || slot >= len(a.NICs) || a.NICs[slot].Tap == "" {
		return fmt.Errorf("network[%d] has no tap to mute", slot)
	}
	t, err := a.m.markTap(a.NICs[slot].Tap)
	if err != nil {
		return fmt.Errorf("network[%d]: %w", slot, err)
	}
	if err := mute(t, mac); err != nil {
		return fmt.Errorf("network[%d]: %w", slot, err)
	}
	return nil
}

// clsact is the link's clsact qdisc, which holds its ingress filters.
func clsact(link netlink.Link) *netlink.Clsact {
	return &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_CLSACT,
	}}
}

// mute sets the link to drop every frame it receives (the guest sends)
// from mac.
func mute(link netlink.Link, mac net.HardwareAddr) error {
	prog, err := muteProgram(mac)
	if err != nil {
		return err
	}
	name := link.Attrs().Name
	if err := netlink.QdiscAdd(clsact(link)); err != nil && !errors.Is(err, unix.EEXIST) {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("mute %s: %w: %w", name, ErrMuteUnsupported, err)
		}
		return linkErr("add a clsact qdisc to "+name, err)
	}
	ops := make([]byte, 0, 8*len(prog))
	for _, in := range prog {
		ops = binary.NativeEndian.AppendUint16(ops, in.Op)
		ops = append(ops, in.Jt, in.Jf)
		ops = binary.NativeEndian.AppendUint32(ops, in.K)
	}
	req := nl.NewNetlinkRequest(unix.RTM_NEWTFILTER, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	req.AddData(&nl.TcMsg{
		Family:  nl.FAMILY_ALL,
		Ifindex: int32(link.Attrs().Index),
		Handle:  muteHandle,
		Parent:  netlink.HANDLE_MIN_INGRESS,
		Info:    netlink.MakeHandle(mutePrio, nl.Swap16(unix.ETH_P_ALL)),
	})
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("bpf")))
	opts := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	opts.AddRtAttr(nl.TCA_BPF_OPS_LEN, nl.Uint16Attr(uint16(len(prog))))
	opts.AddRtAttr(nl.TCA_BPF_OPS, ops)
	opts.AddRtAttr(nl.TCA_BPF_FLAGS, nl.Uint32Attr(nl.TCA_BPF_FLAG_ACT_DIRECT))
	req.AddData(opts)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("mute %s: %w: %w", name, ErrMuteUnsupported, err)
		}
		return linkErr("add vmfest's filter to "+name, err)
	}
	return nil
}

// Unmute removes from the tap, which must be vmfest's, what Mute had Plug
// set. It reports whether the tap was muted; a tap that is gone was not.
func (m *Manager) Unmute(tap string) (bool, error) {
	id, err := m.stateID(false)
	if err != nil {
		return false, err
	}
	link, err := netlink.LinkByName(tap)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, linkErr("tap "+tap, err)
	}
	if link.Type() != "tuntap" || id == "" || link.Attrs().Alias != tapMark(id) {
		return false, fmt.Errorf("tap %s %w", tap, ErrForeignLink)
	}
	return unmute(link)
}

// unmute removes vmfest's filter from the link, and its clsact qdisc once
// no other filter is left on it.
func unmute(link netlink.Link) (bool, error) {
	name := link.Attrs().Name
	filters, err := netlink.FilterList(link, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return false, nil // no clsact qdisc: nothing to remove
		}
		return false, linkErr("list the filters of "+name, err)
	}
	found, others := false, 0
	for _, f := range filters {
		if a := f.Attrs(); f.Type() == "bpf" && a.Priority == mutePrio && a.Handle == muteHandle {
			if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
				return false, linkErr("remove vmfest's filter from "+name, err)
			}
			found = true
			continue
		}
		others++
	}
	if found && others == 0 {
		if err := netlink.QdiscDel(clsact(link)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return true, linkErr("remove the clsact qdisc of "+name, err)
		}
	}
	return found, nil
}
