package vmfest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
)

// Re-identification. A clone started from its source's memory runs the
// source's guest: the hypervisor gives it the clone's MACs and VM
// generation ID (QEMU writes the new GUID into the guest as the state
// loads), but the guest keeps what it had set itself — the source's MAC on
// each NIC (the migrated virtio-net state wins over the command line), the
// source's address and DHCP client, its host name. reidentify tells the
// guest, through its guest agent:
//
//   - each NIC, found by the source's MAC (a physical one before a bridge
//     or VLAN that shares it), takes the clone's (link down, address and
//     up) and its DHCP client starts again with it: the tiny guest's
//     udhcpc is ended and started with the arguments it ran with (its
//     hostname:OLD option becomes the new name); another guest gets
//     `networkctl reconfigure`, `dhclient -r; dhclient` or
//     `nmcli device reapply`, the first it has;
//   - the host name (hostname, hostnamectl when present, /etc/hostname,
//     the 127.0.1.1 line of /etc/hosts);
//   - 64 bytes of the host's randomness (as hex) written to /dev/urandom,
//     beside the vmgenid device (a guest kernel without a vmgenid driver
//     does not reseed from it);
//
// all in one agent command when the agent is the tiny guest's
// (reidentifyCommand, done in the agent's own process), else in one guest
// command (reidentifyScript, through guest-exec: qemu-ga), and sets the
// guest's clock in the same command or agent session (a resumed guest's
// clock stood still while it was saved; Start leaves it to this). It then
// waits until every NIC has the clone's MAC and each host-only NIC its
// reserved address (first on the host, in dnsmasq's leases, then in the
// guest). Until the guest has the clone's MAC on a NIC, the NIC's tap drops
// what the guest sends from the source's MAC (muteClone; where the kernel
// cannot, the NIC's link is down): the guest, and the announcements QEMU
// has it make after the state loads, would otherwise speak on the network
// with the source's MAC and address. The guest drops the source's IPv4
// addresses before it changes a MAC. The script exits 0 only once every
// NIC has taken its MAC (the command answers only then); then the taps
// are unmuted (the links set up). A DHCP client that follows the MAC (the
// tiny guest's) leases at once; the script's background part (the
// agent's, after the command) waits for each link's carrier before it
// starts the NIC's udhcpc, whose request names the clone's MAC and so gets
// the clone's reservation. The
// record's Reidentify flag is set before the clone first runs and cleared
// only here, so a crash or a failure is visible and the next start from
// the saved state tries again (a start that boots afresh just clears it:
// the guest comes up with the clone's MACs). A guest without an agent
// keeps the source's identity, off its networks, until it is powered down
// and started again.

// reidentifyRecord is a clone's pending re-identification.
type reidentifyRecord struct {
	// Source is the machine it was cloned from.
	Source string `json:"source"`
	// MACs are the source's MACs by NIC slot: the guest's until it is
	// re-identified.
	MACs []string `json:"macs"`
	// Since is when the clone was made.
	Since time.Time `json:"since"`
}

// ReidentifyTimeout bounds a clone's re-identification when its context
// has no deadline: the guest agent's answer, the commands and the DHCP
// renewals.
const ReidentifyTimeout = 60 * time.Second

// ErrNotReidentified is wrapped by the error of a clone whose guest could
// not be re-identified: the clone exists and runs, with its source's MACs
// (in the guest), address and host name, off its networks (muteClone); a
// start from its saved state tries again.
var ErrNotReidentified = errors.New("the clone's guest still has its source's identity")

// reidentifyScript runs in the guest: sh -c SCRIPT vmfest-reidentify
// NEWNAME [SLOT SOURCEMAC CLONEMAC]..., the host's randomness on stdin as
// one line of hex. Under TCG a resumed guest pays for every code path it
// runs for the first time (QEMU translates it anew), so the script runs as
// few programs as it can: shell builtins read /proc and /sys, the DHCP
// clients are found by their comm and read with `read -d ”` where the
// shell has it, each NIC takes its MAC with two `ip` calls, and what waits
// for the host (the carrier, then the DHCP client) runs in the background
// after the script has exited 0 — which the host takes as "every NIC has
// the clone's MAC" and puts the NICs back on their networks.
const reidentifyScript = `set -u
ifs=$IFS
new=$1; shift
seed=
read -r seed || :
[ -n "$seed" ] && { printf '%s\n' "$seed" >/dev/urandom; } 2>/dev/null
old=
{ read -r old </proc/sys/kernel/hostname; } 2>/dev/null
if command -v hostnamectl >/dev/null 2>&1 && hostnamectl set-hostname "$new" 2>/dev/null; then :; else
	{ printf '%s\n' "$new" >/proc/sys/kernel/hostname; } 2>/dev/null || hostname "$new" || exit 1
	{ printf '%s\n' "$new" >/etc/hostname; } 2>/dev/null
fi
nl='
'
hosts= edit=
if [ -w /etc/hosts ]; then
	while IFS= read -r l || [ -n "$l" ]; do
		case $l in
		"127.0.1.1 $new") ;;
		127.0.1.1[[:space:]]*) l="127.0.1.1 $new" edit=1 ;;
		esac
		hosts="$hosts$l$nl"
	done </etc/hosts
	[ -n "$edit" ] && { printf '%s' "$hosts" >/etc/hosts; } 2>/dev/null
fi
nics=
for d in /sys/class/net/*; do
	a=none
	{ read -r a <"$d/address"; } 2>/dev/null
	dev=0
	[ -e "$d/device" ] && dev=1
	nics="$nics${d##*/} $a $dev$nl"
done
n=0
while [ $# -ge 3 ]; do
	slot=$1 from=$2 to=$3; shift 3
	ifc= cur=
	IFS=$nl
	for e in $nics; do
		a=${e#* } name=${e%% *}
		if [ "${a% *}" = "$to" ]; then cur=$name; break; fi
		if [ "${a% *}" = "$from" ] && { [ -z "$ifc" ] || [ "${a##* }" = 1 ]; }; then ifc=$name; fi
	done
	IFS=$ifs
	[ -n "$cur" ] && continue
	if [ -z "$ifc" ]; then
		echo "network[$slot]: the guest has no interface with the source's MAC $from or the clone's $to" >&2
		exit 1
	fi
	eval "ifc_$n=\$ifc mac_$n=\$to args_$n="
	n=$((n + 1))
done
[ $n -eq 0 ] && exit 0
rd=
{ read -r -d '' rd </dev/null; } 2>/dev/null
[ $? -eq 1 ] && rd=1
dhcpc=
for p in /proc/[0-9]*; do
	{ read -r comm <"$p/comm"; } 2>/dev/null && [ "$comm" = udhcpc ] || continue
	pid=${p#/proc/} c=
	if [ -n "$rd" ]; then
		{ while IFS= read -r -d '' a; do c="$c$a$nl"; done <"$p/cmdline"; } 2>/dev/null
	else
		c=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null)
	fi
	case "${c%%$nl*}" in udhcpc|*/udhcpc) ;; *) continue ;; esac
	j=0
	while [ $j -lt $n ]; do
		eval "ifc=\$ifc_$j args=\$args_$j"
		case "$nl$c" in *"$nl$ifc$nl"*)
			if [ -z "$args" ]; then
				eval "args_$j=\$c"
				dhcpc="$dhcpc $pid"
			fi
			break ;;
		esac
		j=$((j + 1))
	done
done
pause() { sleep 0.02 2>/dev/null || sleep 1; }
for pid in $dhcpc; do kill "$pid" 2>/dev/null; done
j=0
while [ $j -lt $n ]; do
	eval "ip link set dev \"\$ifc_$j\" down" || exit 1
	j=$((j + 1))
done
for pid in $dhcpc; do
	i=0
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 250 ]; do pause; i=$((i + 1)); done
done
j=0
while [ $j -lt $n ]; do
	eval "ip -4 addr flush dev \"\$ifc_$j\"" || exit 1
	eval "ip link set dev \"\$ifc_$j\" address \"\$mac_$j\" up" || exit 1
	j=$((j + 1))
done
(
	j=0
	while [ $j -lt $n ]; do
		eval "ifc=\$ifc_$j args=\$args_$j"
		j=$((j + 1))
		i=0
		while [ $i -lt 500 ]; do
			op= ca=
			{ read -r op <"/sys/class/net/$ifc/operstate"; read -r ca <"/sys/class/net/$ifc/carrier"; } 2>/dev/null
			[ "$ca" = 1 ] && { [ "$op" = up ] || [ "$op" = unknown ]; } && break
			pause
			i=$((i + 1))
		done
		if [ -n "$args" ]; then
			(
				IFS=$nl
				set -f
				set --
				for a in $args; do
					[ "$a" = "hostname:$old" ] && a="hostname:$new"
					set -- "$@" "$a"
				done
				if command -v setsid >/dev/null 2>&1; then exec setsid "$@"; fi
				exec "$@"
			) &
		elif command -v networkctl >/dev/null 2>&1 && networkctl reconfigure "$ifc"; then :
		elif command -v dhclient >/dev/null 2>&1; then dhclient -r "$ifc"; dhclient -nw "$ifc"
		elif command -v nmcli >/dev/null 2>&1; then nmcli device reapply "$ifc"
		fi
	done
) </dev/null >/dev/null 2>&1 &
exit 0
`

// retryReidentify is the re-identification of a start of a clone whose
// guest never took its identity: a guest resumed from the source's memory
// is re-identified now; one that booted afresh (the clone was powered
// down) came up with the clone's MACs, as a clone of a powered-off
// machine does, so the flag just goes.
func (m *localMachine) retryReidentify(ctx context.Context, r record, resumed bool) {
	if !resumed {
		cur, err := m.l.readRecord(m.name)
		if err == nil {
			cur.Reidentify = nil
			err = writeRecord(m.dir(), cur)
		}
		if err != nil {
			m.l.log.Warn("clear the clone's re-identification", "machine", m.name, "err", err)
		}
		return
	}
	d, err := m.drv(r)
	if err == nil {
		err = m.reidentify(ctx, d)
	}
	if err != nil {
		m.l.log.Warn("the clone runs with its source's identity", "machine", m.name, "err", err)
	}
}

// reidentifyAgentWait bounds the wait for the guest agent of a clone
// resumed from memory: its agent ran when the state was taken, so it
// answers at once or never.
const reidentifyAgentWait = 15 * time.Second

// reidentify re-identifies the running clone's guest (see above) and
// clears its record's flag. ctx bounds it (ReidentifyTimeout when it has
// no deadline). The error wraps ErrNotReidentified.
func (m *localMachine) reidentify(ctx context.Context, d driver.Driver) (err error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ReidentifyTimeout)
		defer cancel()
	}
	begun := time.Now()
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w: machine %s: %w", ErrNotReidentified, m.name, err)
		}
	}()
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return err
	}
	if r.Reidentify == nil {
		// Re-identified meanwhile; its clock is still this start's to set.
		m.setClock(ctx, d, r)
		return nil
	}
	if info := d.Info(); !info.Features.GuestAgent {
		return fmt.Errorf("the %s driver has no guest agent", info.Name)
	}
	actx, cancel := context.WithTimeout(ctx, reidentifyAgentWait)
	a, err := d.Agent(actx, m.ref(r))
	cancel()
	if err != nil {
		return fmt.Errorf("its guest agent did not answer: %w", err)
	}
	defer a.Close()
	agentAt := time.Since(begun)
	native, err := m.reidentifyInAgent(ctx, a, r)
	if err != nil {
		return err
	}
	if !native {
		pid, err := startScript(ctx, a, reidentifyArgs(m.name, r), reidentifySeed())
		if err != nil {
			return err
		}
		// The clock, in the same session while the script runs: the
		// guest's stood still while it was saved.
		m.setClockWith(ctx, a)
		if err := waitScript(ctx, a, pid); err != nil {
			return err
		}
		m.reseed(ctx, a)
	}
	execAt := time.Since(begun)
	if err := m.plugReidentified(ctx, d, r); err != nil {
		return err
	}
	m.waitLeases(ctx, r, begun)
	if err := waitReidentified(ctx, a, r); err != nil {
		return err
	}
	cur, err := m.l.readRecord(m.name)
	if err != nil {
		return err
	}
	cur.Reidentify = nil
	if err := writeRecord(m.dir(), cur); err != nil {
		return err
	}
	m.l.log.Debug("clone re-identified", "machine", m.name, "source", r.Reidentify.Source, "by-agent", native, "agent", agentAt, "commands", execAt, "took", time.Since(begun))
	return nil
}

// nicIdentity is a plugged NIC of a clone: its slot, the source's MAC
// (the guest's until now; "-" if the record lacks it) and the clone's.
type nicIdentity struct {
	Slot int    `json:"slot"`
	From string `json:"from"`
	To   string `json:"to"`
}

// reidentifyNICs lists the clone's plugged NICs.
func reidentifyNICs(r record) []nicIdentity {
	var out []nicIdentity
	for i, n := range r.Hardware.Network {
		if n.AttachmentType == spec.AttachNone {
			continue
		}
		old := "-"
		if i < len(r.Reidentify.MACs) && r.Reidentify.MACs[i] != "" {
			old = strings.ToLower(r.Reidentify.MACs[i])
		}
		out = append(out, nicIdentity{Slot: i, From: old, To: strings.ToLower(n.MACAddress)})
	}
	return out
}

// reidentifyArgs are the arguments of /bin/sh for reidentifyScript: the
// new host name, then each plugged NIC's slot and MACs (reidentifyNICs).
func reidentifyArgs(name string, r record) []string {
	args := []string{"-c", reidentifyScript, "vmfest-reidentify", name}
	for _, n := range reidentifyNICs(r) {
		args = append(args, strconv.Itoa(n.Slot), n.From, n.To)
	}
	return args
}

// reidentifyCommand is the tiny guest's agent's command (guest/qga) that
// does in the agent's own process what reidentifyScript does, reseeds the
// CRNG as reseedCommand does and sets the clock as guest-set-time does:
// under TCG a resumed clone answers it in tens of milliseconds where the
// script, its programs and the polls of guest-exec-status take a few
// hundred.
const reidentifyCommand = "vmfest-reidentify"

// reidentifyInAgent re-identifies the guest with reidentifyCommand. It
// reports false, and no error, when the agent has no such command (qemu-ga):
// the caller runs reidentifyScript instead.
func (m *localMachine) reidentifyInAgent(ctx context.Context, a driver.Agent, r record) (bool, error) {
	if m.l.scriptReidentify[m.name] {
		return false, nil
	}
	seed := make([]byte, 64)
	rand.Read(seed)
	raw, err := a.Execute(ctx, reidentifyCommand, map[string]any{
		"hostname": m.name,
		"seed":     base64.StdEncoding.EncodeToString(seed),
		"nics":     reidentifyNICs(r),
		// The clock, in the same command: the guest's stood still while
		// it was saved.
		"time": time.Now().UnixNano(),
	})
	if errors.Is(err, driver.ErrUnsupported) {
		return false, nil
	}
	if err != nil {
		return true, fmt.Errorf("the re-identification in the guest failed: %w", err)
	}
	var res struct {
		Warnings []string `json:"warnings"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return true, fmt.Errorf("the guest agent's %s reply: %w", reidentifyCommand, err)
	}
	for _, w := range res.Warnings {
		m.l.log.Warn("the clone's re-identification", "machine", m.name, "guest", w)
	}
	return true, nil
}

// reidentifySeed is the script's standard input: 64 bytes of the host's
// randomness as one line of hex, which the shell reads and writes to
// /dev/urandom with builtins (the pool mixes in whatever is written, so
// the text carries all 512 bits).
func reidentifySeed() []byte {
	seed := make([]byte, 64)
	rand.Read(seed)
	return []byte(hex.EncodeToString(seed) + "\n")
}

// reseedCommand is the tiny guest's agent's command (guest/qga) that mixes
// a seed into the kernel's input pool and reseeds its CRNG at once.
const reseedCommand = "vmfest-reseed-crng"

// reseedPython does in a guest with python3 what reseedCommand does (the
// seed comes as a line of hex on standard input).
const reseedPython = `command -v python3 >/dev/null 2>&1 || exit 0
exec python3 -c '
import fcntl, os, struct, sys
s = bytes.fromhex(sys.stdin.readline().strip())
fd = os.open("/dev/urandom", os.O_WRONLY)
fcntl.ioctl(fd, 0x40085203, struct.pack("ii", 8 * len(s), len(s)) + s)
try:
    fcntl.ioctl(fd, 0x5207)
except OSError:
    pass
'`

// reseed makes the clone's guest kernel reseed its CRNG, which it resumed
// with in its source's state: what the script wrote to /dev/urandom only
// reaches the CRNG at its next reseed, which a kernel with a vmgenid driver
// does at once when the generation ID changes and one without (Debian's
// cloud kernel) within a minute — or, if the source was saved before its
// CRNG was ready, once the pool has 256 credited bits. So vmfest gives the
// guest 32 bytes of the host's randomness credited as entropy
// (RNDADDENTROPY) and asks for a reseed (RNDRESEEDCRNG): through the tiny
// guest's agent's reseedCommand, or, with another agent (qemu-ga answers
// that it has no such command), through python3 started in the guest,
// without waiting (python starts in about a second under TCG). Best
// effort: a guest with neither reseeds when its kernel next does.
func (m *localMachine) reseed(ctx context.Context, a driver.Agent) {
	seed := make([]byte, 32)
	rand.Read(seed)
	_, err := a.Execute(ctx, reseedCommand, map[string]string{"seed": base64.StdEncoding.EncodeToString(seed)})
	if err == nil {
		return
	}
	_, perr := a.Execute(ctx, "guest-exec", map[string]any{
		"path": "/bin/sh", "arg": []string{"-c", reseedPython},
		"input-data": base64.StdEncoding.EncodeToString([]byte(hex.EncodeToString(seed) + "\n")),
	})
	m.l.log.Debug("the clone's CRNG is reseeded by python3 if the guest has it", "machine", m.name, "agent", err, "python3", perr)
}

// leaseWait bounds how long waitLeases watches the host's DHCP leases
// before waitReidentified asks the guest anyway; leasePoll is how often
// it reads them.
const (
	leaseWait = 2 * time.Second
	leasePoll = 5 * time.Millisecond
)

// waitLeases waits, on the host, until dnsmasq has leased each of the
// clone's host-only NICs its reserved address (a lease granted since
// since), at most leaseWait. Each guest-network-get-interfaces the guest
// answers costs it CPU time its DHCP client needs (under TCG much of it
// translating code the resumed guest runs for the first time), so
// waitReidentified asks the guest once the host has seen the leases. Best
// effort: what it cannot read, or a lease later than leaseWait, is left to
// the guest's own answer.
func (m *localMachine) waitLeases(ctx context.Context, r record, since time.Time) {
	nm, err := m.l.networks()
	if err != nil {
		return
	}
	type want struct{ network, ip, mac string }
	var todo []want
	for i, n := range r.Hardware.Network {
		if n.AttachmentType == spec.AttachHostOnly && i < len(r.Net.NICs) && r.Net.NICs[i].IP != "" {
			todo = append(todo, want{r.Net.NICs[i].Network, r.Net.NICs[i].IP, strings.ToLower(n.MACAddress)})
		}
	}
	if len(todo) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, leaseWait)
	defer cancel()
	tick := time.NewTicker(leasePoll)
	defer tick.Stop()
	for {
		for len(todo) > 0 {
			if ip, _ := nm.ConfirmLease(todo[0].network, todo[0].ip, todo[0].mac, since); ip == "" {
				break
			}
			todo = todo[1:]
		}
		if len(todo) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// waitReidentified polls the guest agent until every plugged NIC has the
// clone's MAC and each one with a host-only reservation its address.
func waitReidentified(ctx context.Context, a driver.Agent, r record) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ifs, err := driver.Interfaces(ctx, a)
		missing := ""
		if err == nil {
			missing = notYetReidentified(r, ifs)
			if missing == "" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("waiting for the guest's new addresses: %w", err)
			}
			return fmt.Errorf("waiting for the guest's new addresses: %s: %w", missing, ctx.Err())
		case <-tick.C:
		}
	}
}

// notYetReidentified says what the guest does not have yet, "" when it has
// it all.
func notYetReidentified(r record, ifs []driver.Interface) string {
	for i, n := range r.Hardware.Network {
		if n.AttachmentType == spec.AttachNone {
			continue
		}
		mac := strings.ToLower(n.MACAddress)
		var found *driver.Interface
		for j := range ifs {
			if strings.ToLower(ifs[j].HWAddress) == mac {
				found = &ifs[j]
			}
		}
		if found == nil {
			return fmt.Sprintf("network[%d] has not got MAC %s", i, mac)
		}
		want := ""
		if i < len(r.Net.NICs) && n.AttachmentType == spec.AttachHostOnly {
			want = r.Net.NICs[i].IP
		}
		if want == "" {
			continue
		}
		has := false
		for _, ip := range found.IPAddresses {
			has = has || ip.Address == want
		}
		if !has {
			return fmt.Sprintf("network[%d] (%s) has not got its address %s", i, found.Name, want)
		}
	}
	return ""
}

// scriptPoll is how often runScript asks whether the script has ended:
// often, since the clone is not ready before it has.
const scriptPoll = 10 * time.Millisecond

// startScript starts /bin/sh with args in the guest (guest-exec, stdin
// given) and returns its pid there.
func startScript(ctx context.Context, a driver.Agent, args []string, stdin []byte) (int, error) {
	raw, err := a.Execute(ctx, "guest-exec", map[string]any{
		"path": "/bin/sh", "arg": args, "capture-output": true,
		"input-data": base64.StdEncoding.EncodeToString(stdin),
	})
	if err != nil {
		return 0, fmt.Errorf("the guest agent could not run the re-identification: %w", err)
	}
	var started struct {
		PID *int `json:"pid"`
	}
	if err := json.Unmarshal(raw, &started); err != nil || started.PID == nil {
		return 0, fmt.Errorf("the guest agent's guest-exec reply has no pid: %.200s", raw)
	}
	return *started.PID, nil
}

// plugReidentified puts each NIC muteClone kept off its network back on
// once the guest has the clone's MAC on every NIC (the agent's command
// answers, or the script exits 0, only then): a muted tap is unmuted, a
// link held down set up. The DHCP client the guest runs on a muted NIC
// may have leased meanwhile, from the clone's MAC, which the tap lets
// through; on a held link it waits for the carrier.
func (m *localMachine) plugReidentified(ctx context.Context, d driver.Driver, r record) error {
	nm, err := m.l.networks()
	if err != nil {
		return err
	}
	for _, i := range reidentifiedSlots(r) {
		if r.Net.ID != "" {
			// A NIC without a tap (nat) was not muted.
			muted, err := nm.Unmute(network.TapName(r.Net.ID, i))
			if err != nil {
				return fmt.Errorf("network[%d]: %w", i, err)
			}
			if muted {
				continue
			}
		}
		ln, ok := d.(driver.Links)
		if !ok {
			continue
		}
		if err := ln.SetLink(ctx, m.ref(r), i, true); err != nil {
			return fmt.Errorf("plug network[%d] in: %w", i, err)
		}
	}
	return nil
}

// waitScript waits for the guest's script pid to end, asking every
// scriptPoll; it is an error unless the script exits 0, with what it wrote
// to stderr.
func waitScript(ctx context.Context, a driver.Agent, pid int) error {
	tick := time.NewTicker(scriptPoll)
	defer tick.Stop()
	for {
		raw, err := a.Execute(ctx, "guest-exec-status", map[string]int{"pid": pid})
		if err != nil {
			return fmt.Errorf("the re-identification in the guest (pid %d): %w", pid, err)
		}
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode *int   `json:"exitcode"`
			ErrData  string `json:"err-data"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("the guest agent's guest-exec-status reply: %w", err)
		}
		if st.Exited {
			if st.ExitCode != nil && *st.ExitCode == 0 {
				return nil
			}
			msg, _ := base64.StdEncoding.DecodeString(st.ErrData)
			code := "a signal"
			if st.ExitCode != nil {
				code = fmt.Sprintf("exit %d", *st.ExitCode)
			}
			return fmt.Errorf("the re-identification in the guest failed (%s): %s", code, strings.TrimSpace(string(msg)))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the re-identification in the guest (pid %d) did not end: %w", pid, ctx.Err())
		case <-tick.C:
		}
	}
}
