package qga

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"syscall"
)

// ReidentifyCommand is the tiny agent's own command (not qemu-ga's) that
// gives a clone resumed from its source's memory the clone's identity,
// in the agent's process: what vmfest's host side otherwise does with a
// shell script run by guest-exec (reidentify.go in the vmfest package),
// which under TCG costs a resumed clone a few hundred milliseconds of
// programs started and translated afresh. It
//
//   - sets the clock to "time" (nanoseconds since the Unix epoch), as
//     guest-set-time does;
//   - mixes "seed" (base64) into the kernel's input pool, credited, and
//     reseeds the CRNG (as ReseedCommand);
//   - sets the host name to "hostname" (the kernel's, /etc/hostname and
//     the 127.0.1.1 line of /etc/hosts);
//   - for each of "nics" ({"slot", "from", "to"}: the source's MAC, or "-"
//     when unknown, and the clone's), finds the interface with the
//     clone's MAC (then there is nothing to do) or else the source's (a
//     physical one before a bridge or VLAN that shares it), ends the
//     udhcpc running on it, and sets the link down, the clone's MAC, and
//     up.
//
// It answers once every NIC has the clone's MAC; then, in the background,
// it waits for each changed NIC's carrier (the host holds the link down
// until the answer) and starts its udhcpc again with the arguments it
// ran with, its hostname:OLD option naming the new host. Every NIC is
// looked up before anything changes: a NIC the guest lacks is an error
// that leaves the guest as it was.
const ReidentifyCommand = "vmfest-reidentify"

// ReidentifyNIC is one NIC of ReidentifyCommand's arguments.
type ReidentifyNIC struct {
	Slot int    `json:"slot"`
	From string `json:"from"`
	To   string `json:"to"`
}

// ReidentifyArgs are ReidentifyCommand's arguments.
type ReidentifyArgs struct {
	Hostname string `json:"hostname"`
	Seed     string `json:"seed,omitempty"`
	// Time, when set, is the time to set the clock to (nanoseconds since
	// the Unix epoch), as guest-set-time does: a resumed clone's clock
	// stood still while its source was saved.
	Time int64           `json:"time,omitempty"`
	NICs []ReidentifyNIC `json:"nics,omitempty"`
}

// ReidentifyResult is ReidentifyCommand's reply: the interfaces that took
// a new MAC, the DHCP clients that will be started again on them, and
// what went wrong short of an error (a CRNG not reseeded, a file not
// written).
type ReidentifyResult struct {
	Changed  []string `json:"changed"`
	Clients  int      `json:"dhcp-clients"`
	Warnings []string `json:"warnings,omitempty"`
}

// guestNIC is a network interface as reidentify finds it.
type guestNIC struct {
	name     string
	mac      string
	physical bool // it has a device (not a bridge, VLAN or bond)
}

// managesDHCP says the agent's own DHCP client keeps ifc addressed.
func (a *Agent) managesDHCP(ifc string) bool {
	return a.DHCP != nil && a.DHCP.Manages(ifc)
}

// nicChange is an interface to take a new MAC.
type nicChange struct {
	name, mac string
}

func (a *Agent) reidentify(args json.RawMessage) (any, error) {
	var p ReidentifyArgs
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	if p.Hostname == "" || len(p.Hostname) > 64 || strings.ContainsAny(p.Hostname, "\x00\n/ ") {
		return nil, Errorf("Invalid parameter 'hostname': %q is not a host name", p.Hostname)
	}
	seed, err := base64.StdEncoding.DecodeString(p.Seed)
	if err != nil {
		return nil, Errorf("Invalid parameter 'seed': %v", err)
	}
	for i, n := range p.NICs {
		if _, err := net.ParseMAC(n.To); err != nil {
			return nil, Errorf("Invalid parameter 'nics[%d].to': %v", i, err)
		}
		if n.From != "-" {
			if _, err := net.ParseMAC(n.From); err != nil {
				return nil, Errorf("Invalid parameter 'nics[%d].from': %v", i, err)
			}
		}
	}
	nics, err := listNICs()
	if err != nil {
		return nil, Errorf("%s: %v", ReidentifyCommand, err)
	}
	changes, err := planNICs(p.NICs, nics)
	if err != nil {
		return nil, Errorf("%s: %v", ReidentifyCommand, err)
	}
	res := &ReidentifyResult{Changed: []string{}}
	warn := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		res.Warnings = append(res.Warnings, msg)
		a.logf("%s: %s", ReidentifyCommand, msg)
	}
	if p.Time > 0 {
		tv := syscall.NsecToTimeval(p.Time)
		if err := syscall.Settimeofday(&tv); err != nil {
			warn("the clock is not set: %v", err)
		} else {
			a.logf("%s: clock set to %d", ReidentifyCommand, p.Time)
		}
	}
	if len(seed) > 0 {
		if err := reseedCRNG(seed); err != nil {
			warn("the CRNG is not reseeded: %v", err)
		} else {
			a.logf("%s: %d bytes mixed in, CRNG reseeded", ReidentifyCommand, len(seed))
		}
	}
	old, err := setHostname(p.Hostname, warn)
	if err != nil {
		return nil, Errorf("%s: set the host name: %v", ReidentifyCommand, err)
	}
	clients, err := changeMACs(changes, a.managesDHCP, a.cycleLinks, warn)
	for _, c := range clients {
		c.args = renameHostOption(c.args, old, p.Hostname)
	}
	if err != nil {
		// The clients it ended run again, so a later try finds them.
		go a.restartDHCP(clients)
		return nil, Errorf("%s: %v", ReidentifyCommand, err)
	}
	for _, c := range changes {
		res.Changed = append(res.Changed, c.name)
	}
	res.Clients = len(clients)
	if len(clients) > 0 {
		go a.restartDHCP(clients)
	}
	a.logf("%s: host name %s, new MACs on %v, %d DHCP clients to start", ReidentifyCommand, p.Hostname, res.Changed, len(clients))
	return res, nil
}

// planNICs finds the interface of each NIC: none when one already has the
// clone's MAC, else the one with the source's, a physical one before
// another that shares its MAC. A NIC with neither is an error.
func planNICs(want []ReidentifyNIC, have []guestNIC) ([]nicChange, error) {
	var out []nicChange
	for _, w := range want {
		to := strings.ToLower(w.To)
		from := strings.ToLower(w.From)
		var cur, found *guestNIC
		for i := range have {
			g := &have[i]
			if g.mac == to {
				cur = g
				break
			}
			if g.mac == from && (found == nil || g.physical) {
				found = g
			}
		}
		if cur != nil {
			continue
		}
		if found == nil {
			return nil, fmt.Errorf("network[%d]: the guest has no interface with the source's MAC %s or the clone's %s", w.Slot, from, to)
		}
		out = append(out, nicChange{name: found.name, mac: to})
	}
	return out, nil
}

// rewriteHosts gives the 127.0.1.1 line of an /etc/hosts the new name; it
// reports false when nothing changes.
func rewriteHosts(data, name string) (string, bool) {
	lines := strings.SplitAfter(data, "\n")
	changed := false
	for i, l := range lines {
		body := strings.TrimRight(l, "\n")
		if body == "127.0.1.1 "+name {
			continue
		}
		if rest, ok := strings.CutPrefix(body, "127.0.1.1"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			lines[i] = "127.0.1.1 " + name + l[len(body):]
			changed = true
		}
	}
	return strings.Join(lines, ""), changed
}

// dhcpClient is a udhcpc to start again on an interface: its arguments
// (the first is the program) as it ran them.
type dhcpClient struct {
	ifc  string
	args []string
}

// renameHostOption gives udhcpc's hostname:OLD option the new name.
func renameHostOption(args []string, old, name string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if old != "" && a == "hostname:"+old {
			a = "hostname:" + name
		}
		out[i] = a
	}
	return out
}

// isUdhcpcOn reports whether argv (a /proc/PID/cmdline) is a udhcpc run
// on the interface ifc: one of its arguments names it.
func isUdhcpcOn(argv []string, ifc string) bool {
	if len(argv) == 0 {
		return false
	}
	if p := argv[0]; p != "udhcpc" && !strings.HasSuffix(p, "/udhcpc") {
		return false
	}
	for _, a := range argv[1:] {
		if a == ifc || a == "-i"+ifc || a == "--interface="+ifc {
			return true
		}
	}
	return false
}
