package vmfest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
)

// nicInfos describes the NICs of a machine in state st.
func (m *localMachine) nicInfos(r record, st State) []NICInfo {
	out := make([]NICInfo, len(r.Hardware.Network))
	for i, n := range r.Hardware.Network {
		out[i] = NICInfo{Slot: i, Attachment: n.AttachmentType, MAC: n.MACAddress}
		var nr nicRecord
		if i < len(r.Net.NICs) {
			nr = r.Net.NICs[i]
		}
		switch n.AttachmentType {
		case spec.AttachHostOnly, spec.AttachInternal:
			out[i].Network, out[i].IP = nr.Network, nr.IP
		case spec.AttachBridged:
			out[i].Network = n.BridgedInterface
		}
		running := st == Running || st == Paused || st == Stopping
		if n.AttachmentType == spec.AttachNAT && nr.SSHPort != 0 && running {
			out[i].SSH = fmt.Sprintf("127.0.0.1:%d", nr.SSHPort)
		}
		if n.AttachmentType != spec.AttachNAT && n.AttachmentType != spec.AttachNone && running && r.Net.ID != "" {
			out[i].Tap = network.TapName(r.Net.ID, i)
		}
	}
	return out
}

// IP implements Machine. A NAT NIC's address is its SSH forward on
// 127.0.0.1, known at once. For the others the sources are asked in turn
// until one knows the NIC's address: the dnsmasq lease confirming the
// host-only reservation (granted during this run), the guest agent's
// interface list, the bridge's neighbour table. Without a deadline on ctx
// the wait is bounded by DefaultIPTimeout.
func (m *localMachine) IP(ctx context.Context, slot int) (Address, error) {
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return Address{}, err
	}
	if slot < 0 || slot >= len(r.Hardware.Network) {
		return Address{}, fmt.Errorf("%w: machine %s has no NIC in slot %d (it has %d)", ErrInvalid, m.name, slot, len(r.Hardware.Network))
	}
	nic := r.Hardware.Network[slot]
	if nic.AttachmentType == spec.AttachNone {
		return Address{}, fmt.Errorf("%w: machine %s: network[%d] is not attached (attachment-type none), so it has no address", ErrInvalid, m.name, slot)
	}
	st, err := m.State(ctx)
	if err != nil {
		return Address{}, err
	}
	if err := m.need("get the address of", st, Running); err != nil {
		return Address{}, err
	}
	var nr nicRecord
	if slot < len(r.Net.NICs) {
		nr = r.Net.NICs[slot]
	}
	if nic.AttachmentType == spec.AttachNAT {
		if nr.SSHPort == 0 {
			return Address{}, fmt.Errorf("machine %s: network[%d] is nat and has no SSH forward (started by an older vmfest?); restart it", m.name, slot)
		}
		return Address{IP: "127.0.0.1", Port: nr.SSHPort, Source: SourceNATForward}, nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultIPTimeout)
		defer cancel()
	}
	begun := time.Now()
	sources := m.ipSources(r, slot)
	said := make([]string, len(sources))
	for {
		for i, src := range sources {
			ip, note := src.fn(ctx)
			if ip != "" {
				return Address{IP: ip, Source: src.name}, nil
			}
			said[i] = src.name + ": " + note
		}
		select {
		case <-ctx.Done():
			return Address{}, fmt.Errorf("machine %s: %w: no address for network[%d] (%s) after %s; tried %s",
				m.name, ErrTimeout, slot, describeNIC(nic), roundDuration(time.Since(begun)), strings.Join(said, "; "))
		case <-time.After(250 * time.Millisecond):
		}
		if st, err := m.State(ctx); err == nil && st != Running {
			return Address{}, fmt.Errorf("machine %s: it became %s while waiting for the address of network[%d]", m.name, st, slot)
		}
	}
}

func describeNIC(n spec.NIC) string {
	switch n.AttachmentType {
	case spec.AttachHostOnly:
		return "host-only on " + n.HostOnlyInterface
	case spec.AttachBridged:
		return "bridged on " + n.BridgedInterface
	case spec.AttachInternal:
		return "internal network " + n.InternalNetwork
	}
	return n.AttachmentType
}

type ipSource struct {
	name string
	// fn returns the address, or "" and what it found instead.
	fn func(ctx context.Context) (ip, note string)
}

// ipSources lists, in order, where the address of NIC slot can be learnt.
func (m *localMachine) ipSources(r record, slot int) []ipSource {
	nic := r.Hardware.Network[slot]
	mac := strings.ToLower(nic.MACAddress)
	var nr nicRecord
	if slot < len(r.Net.NICs) {
		nr = r.Net.NICs[slot]
	}
	var out []ipSource
	if nic.AttachmentType == spec.AttachHostOnly {
		out = append(out, ipSource{SourceLease, func(ctx context.Context) (string, string) {
			return m.leaseIP(ctx, r, nr, mac)
		}})
	}
	out = append(out, ipSource{SourceAgent, func(ctx context.Context) (string, string) {
		return m.agentIP(ctx, r, mac)
	}})
	bridge := ""
	switch nic.AttachmentType {
	case spec.AttachHostOnly:
		if nm, err := m.l.networks(); err == nil {
			if n, err := nm.Get(nr.Network); err == nil {
				bridge = n.Bridge
			}
		}
	case spec.AttachBridged:
		bridge = nic.BridgedInterface
	}
	if bridge != "" {
		out = append(out, ipSource{SourceNeighbour, func(ctx context.Context) (string, string) {
			ip, err := network.Neighbour(bridge, mac)
			if err != nil {
				return "", err.Error()
			}
			if ip == "" {
				return "", "no entry for " + mac + " on " + bridge
			}
			return ip, ""
		}})
	}
	return out
}

// leaseIP confirms the reserved address by a lease dnsmasq granted it
// during the current run.
func (m *localMachine) leaseIP(ctx context.Context, r record, nr nicRecord, mac string) (string, string) {
	nm, err := m.l.networks()
	if err != nil {
		return "", err.Error()
	}
	st, err := m.status(ctx, r)
	if err != nil || st.Since.IsZero() {
		return "", "not running"
	}
	return nm.ConfirmLease(nr.Network, nr.IP, mac, st.Since)
}

// agentIP asks the guest agent for the IPv4 address of the interface with
// mac, waiting at most 3 seconds for the agent.
func (m *localMachine) agentIP(ctx context.Context, r record, mac string) (string, string) {
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	d, err := m.drv(r)
	if err != nil {
		return "", err.Error()
	}
	if !d.Info().Features.GuestAgent {
		return "", "the " + d.Info().Name + " driver has no guest agent"
	}
	a, err := d.Agent(actx, m.ref(r))
	if err != nil {
		return "", "did not answer"
	}
	defer a.Close()
	ifs, err := driver.Interfaces(actx, a)
	if err != nil {
		return "", err.Error()
	}
	for _, i := range ifs {
		if strings.ToLower(i.HWAddress) != mac {
			continue
		}
		for _, ip := range i.IPAddresses {
			if p := net.ParseIP(ip.Address); ip.Type == "ipv4" && p != nil && !p.IsLinkLocalUnicast() {
				return ip.Address, ""
			}
		}
		return "", fmt.Sprintf("interface %s (%s) has no IPv4 address yet", i.Name, mac)
	}
	return "", "no interface with MAC " + mac
}
