package vmfest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vmfest/vmfest/driver"
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
//   - each NIC, found by the source's MAC, takes the clone's (link down,
//     address, up) and its DHCP client starts again with it: the tiny
//     guest's udhcpc is ended and started with the arguments it ran with
//     (its hostname:OLD option becomes the new name); another guest gets
//     `networkctl reconfigure`, `dhclient -r; dhclient` or
//     `nmcli device reapply`, the first it has;
//   - the host name (hostname, hostnamectl when present, /etc/hostname,
//     the 127.0.1.1 line of /etc/hosts);
//   - 64 bytes of the host's randomness written to /dev/urandom, beside
//     the vmgenid device (a guest kernel without a vmgenid driver does not
//     reseed from it);
//
// and then waits until every NIC has the clone's MAC and each host-only
// NIC its reserved address. Until the guest has the clone's MAC on a NIC,
// that NIC's link is down (holdCloneLinks, driver.Links): the guest, and
// QEMU's announcements after the state loads, would otherwise speak on
// the network with the source's MAC and address; the script waits for
// the link before it starts the NIC's DHCP client. Start has already set the clock. The record's
// Reidentify flag is set before the clone first runs and cleared only
// here, so a crash or a failure is visible and the next start from the
// saved state tries again (a start that boots afresh just clears it: the
// guest comes up with the clone's MACs). A guest without an agent keeps
// the source's identity, off its networks, until it is powered down and
// started again.

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
// (in the guest), address and host name, its links down where the driver
// holds them; a start from its saved state tries again.
var ErrNotReidentified = errors.New("the clone's guest still has its source's identity")

// reidentifyScript runs in the guest: sh -c SCRIPT vmfest-reidentify
// NEWNAME [IFACE NEWMAC]..., the host's randomness on stdin.
const reidentifyScript = `set -u
new=$1; shift
cat >/dev/urandom 2>/dev/null
old=
read -r old </proc/sys/kernel/hostname 2>/dev/null
if command -v hostnamectl >/dev/null 2>&1 && hostnamectl set-hostname "$new" 2>/dev/null; then :; else
	{ printf '%s\n' "$new" >/proc/sys/kernel/hostname; } 2>/dev/null || hostname "$new" || exit 1
	printf '%s\n' "$new" >/etc/hostname 2>/dev/null
fi
[ -w /etc/hosts ] && sed -i "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1 $new/" /etc/hosts 2>/dev/null
pause() { sleep 0.02 2>/dev/null || sleep 1; }
while [ $# -ge 2 ]; do
	ifc=$1 mac=$2; shift 2
	pid= args=
	procs=
	if command -v pidof >/dev/null 2>&1; then
		for p in $(pidof udhcpc); do procs="$procs /proc/$p"; done
	else
		procs=$(echo /proc/[0-9]*)
	fi
	for p in $procs; do
		c=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null) || continue
		case "${c%%
*}" in udhcpc|*/udhcpc) ;; *) continue ;; esac
		case "
$c
" in *"
$ifc
"*) ;; *) continue ;; esac
		pid=${p#/proc/} args=$c
		break
	done
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null
		i=0
		while kill -0 "$pid" 2>/dev/null && [ $i -lt 250 ]; do pause; i=$((i + 1)); done
	fi
	ip link set dev "$ifc" down || exit 1
	ip link set dev "$ifc" address "$mac" || exit 1
	ip link set dev "$ifc" up || exit 1
	# vmfest plugs the link in once it sees the new MAC; the kernel sends
	# once the link is operationally up.
	i=0 op=
	while [ $i -lt 500 ]; do
		{ read -r op <"/sys/class/net/$ifc/operstate"; } 2>/dev/null
		[ "$op" = up ] || [ "$op" = unknown ] && break
		pause
		i=$((i + 1))
	done
	if [ -n "$pid" ]; then
		(
			IFS='
'
			set -f
			set --
			for a in $args; do
				[ "$a" = "hostname:$old" ] && a="hostname:$new"
				set -- "$@" "$a"
			done
			if command -v setsid >/dev/null 2>&1; then
				setsid "$@" </dev/null >/dev/null 2>&1 &
			else
				"$@" </dev/null >/dev/null 2>&1 &
			fi
		)
	elif command -v networkctl >/dev/null 2>&1 && networkctl reconfigure "$ifc" >/dev/null 2>&1; then :
	elif command -v dhclient >/dev/null 2>&1; then dhclient -r "$ifc" >/dev/null 2>&1; dhclient -nw "$ifc" >/dev/null 2>&1
	elif command -v nmcli >/dev/null 2>&1; then nmcli device reapply "$ifc" >/dev/null 2>&1
	fi
done
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
	ifs, err := driver.Interfaces(ctx, a)
	if err != nil {
		return err
	}
	names, err := reidentifyPlan(r, ifs)
	if err != nil {
		return err
	}
	args := []string{"-c", reidentifyScript, "vmfest-reidentify", m.name}
	for i, n := range names {
		if n != "" {
			args = append(args, n, strings.ToLower(r.Hardware.Network[i].MACAddress))
		}
	}
	seed := make([]byte, 64)
	rand.Read(seed)
	agentAt := time.Since(begun)
	pid, err := startScript(ctx, a, args, seed)
	if err != nil {
		return err
	}
	if err := m.plugReidentified(ctx, d, a, r); err != nil {
		return err
	}
	if err := waitScript(ctx, a, pid); err != nil {
		return err
	}
	execAt := time.Since(begun)
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
	m.l.log.Debug("clone re-identified", "machine", m.name, "source", r.Reidentify.Source, "agent", agentAt, "commands", execAt, "took", time.Since(begun))
	return nil
}

// reidentifyPlan names, by NIC slot, the guest interface that must take
// the clone's MAC: the one with the source's MAC. A slot whose interface
// already has the clone's MAC (the guest booted afresh) or that is
// unplugged needs nothing ("").
func reidentifyPlan(r record, ifs []driver.Interface) ([]string, error) {
	byMAC := map[string]string{}
	for _, f := range ifs {
		byMAC[strings.ToLower(f.HWAddress)] = f.Name
	}
	names := make([]string, len(r.Hardware.Network))
	for i, n := range r.Hardware.Network {
		if n.AttachmentType == spec.AttachNone {
			continue
		}
		mac := strings.ToLower(n.MACAddress)
		if _, ok := byMAC[mac]; ok {
			continue
		}
		old := ""
		if i < len(r.Reidentify.MACs) {
			old = strings.ToLower(r.Reidentify.MACs[i])
		}
		name, ok := byMAC[old]
		if !ok || old == "" {
			return nil, fmt.Errorf("network[%d]: the guest has no interface with the source's MAC %s or the clone's %s", i, old, mac)
		}
		names[i] = name
	}
	return names, nil
}

// waitReidentified polls the guest agent until every plugged NIC has the
// clone's MAC and each one with a host-only reservation its address.
func waitReidentified(ctx context.Context, a driver.Agent, r record) error {
	tick := time.NewTicker(20 * time.Millisecond)
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

// plugReidentified sets each held NIC's link up (driver.Links) as soon as
// the guest shows the clone's MAC on it; the
// script waits for that carrier before it starts the NIC's DHCP client.
func (m *localMachine) plugReidentified(ctx context.Context, d driver.Driver, a driver.Agent, r record) error {
	ln, ok := d.(driver.Links)
	if !ok {
		return nil
	}
	todo := map[int]bool{}
	for i, n := range r.Hardware.Network {
		if n.AttachmentType != spec.AttachNone {
			todo[i] = true
		}
	}
	tick := time.NewTicker(scriptPoll)
	defer tick.Stop()
	for len(todo) > 0 {
		ifs, err := driver.Interfaces(ctx, a)
		if err == nil {
			for i := range todo {
				mac := strings.ToLower(r.Hardware.Network[i].MACAddress)
				for _, f := range ifs {
					if strings.ToLower(f.HWAddress) != mac {
						continue
					}
					if err := ln.SetLink(ctx, m.ref(r), i, true); err != nil {
						return err
					}
					delete(todo, i)
				}
			}
		}
		if len(todo) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the guest to take the clone's MACs (its links stay down): %w", ctx.Err())
		case <-tick.C:
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
