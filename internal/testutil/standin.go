package testutil

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// reidentifyHarness runs in new network, UTS, mount and PID namespaces
// (unshare) and stands in for a clone's guest resumed from its source's
// memory: an interface v0 with the source's MAC (52:54:00:00:00:01, a
// veth whose peer v1 has 52:54:00:00:00:0b) and the source's address
// 192.0.2.10/24, the host name oldname, and a
// busybox udhcpc on v0 sending it. /etc/hosts and /etc/hostname are files
// of its own, bind-mounted; PATH holds only busybox's applets. It then
// runs $RUN (which writes what it says to $DIR/out), waits for a udhcpc
// sending hostname:$CLIENT, and prints what the guest has.
const reidentifyHarness = `set -e
mount -t sysfs sysfs /sys
mount --bind "$DIR/hosts" /etc/hosts
mount --bind "$DIR/hostname" /etc/hostname
"$IP" link set lo up
"$IP" link add v0 type veth peer name v1
"$IP" link set dev v0 address 52:54:00:00:00:01
"$IP" link set dev v1 address 52:54:00:00:00:0b
"$IP" link set v1 up
"$IP" link set v0 up
"$IP" addr add 192.0.2.10/24 dev v0
export PATH="$DIR/bin"
hostname oldname
"$DIR/bin/udhcpc" -f -i v0 -s /bin/true -x hostname:oldname </dev/null >/dev/null 2>&1 &
old=$!
until [ "$(cat /proc/$old/comm)" = udhcpc ]; do sleep 0.01; done
set +e
eval "$RUN"
echo "rc=$?"
i=0
until [ $i -ge 200 ] || [ "$(for p in $(pidof udhcpc); do tr '\0' ' ' <"/proc/$p/cmdline"; done)" = "$DIR/bin/udhcpc -f -i v0 -s /bin/true -x hostname:$CLIENT " ]; do
	sleep 0.05
	i=$((i + 1))
done
echo "mac=$(cat /sys/class/net/v0/address)"
echo "ll6=$(ip -6 addr show dev v0 | grep -o 'fe80::[0-9a-f:]*' | tr '\n' ' ')"
echo "v4=$(ip -4 addr show dev v0 | grep -o 'inet [0-9./]*' | tr '\n' ' ')"
echo "host=$(hostname)"
echo "etc-hostname=$(cat /etc/hostname)"
echo "hosts=$(grep '^127.0.1.1' /etc/hosts)"
for p in $(pidof udhcpc); do echo "udhcpc=$(tr '\0' ' ' <"/proc/$p/cmdline")"; done
echo "out=$(cat "$DIR/out" 2>/dev/null)"
`

// ReidentifyStandIn runs run (a shell command; it may write to $DIR/out)
// against a namespaced stand-in for a resumed clone's guest (see
// reidentifyHarness), with env added to the environment, and checks what
// the harness printed, one "key=value" a line: rc (run's exit code), mac
// (v0's), ll6 (v0's IPv6 link-local addresses, each followed by a space),
// v4 (v0's IPv4 addresses as "inet A/N", each followed by a space),
// host, etc-hostname, hosts (the 127.0.1.1 line), one udhcpc= per
// DHCP client (its command line) and out. Every line of want must be
// there, and exactly one DHCP client, DIR/bin/udhcpc on v0 sending
// hostname:client (the harness waits up to 10 s for it). It returns DIR.
// It skips t without root, busybox, iproute2's ip or unshare. Where the
// host has no IPv6, want's ll6 lines are not checked.
func ReidentifyStandIn(t *testing.T, run, client string, want []string, env ...string) (dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it runs in namespaces of its own")
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox (the tiny guest's shell and udhcpc)")
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("needs iproute2's ip to make a veth pair")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare")
	}
	dir = t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"cat", "grep", "hostname", "ip", "kill", "pidof", "setsid", "sleep", "tr", "udhcpc", "wc"} {
		if err := os.Symlink(busybox, filepath.Join(bin, a)); err != nil {
			t.Fatal(err)
		}
	}
	for f, data := range map[string]string{"hosts": "127.0.0.1 localhost\n127.0.1.1 oldname\n::1 localhost\n", "hostname": "oldname\n"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--uts", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", reidentifyHarness)
	cmd.Env = append(append(os.Environ(), "DIR="+dir, "IP="+ip, "RUN="+run, "CLIENT="+client), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		want = slices.DeleteFunc(slices.Clone(want), func(w string) bool { return strings.HasPrefix(w, "ll6=") })
	}
	for _, w := range append(want, "udhcpc="+bin+"/udhcpc -f -i v0 -s /bin/true -x hostname:"+client+" ") {
		if !slices.Contains(lines, w) {
			t.Errorf("no line %q in:\n%s", w, out)
		}
	}
	if n := strings.Count(string(out), "udhcpc="); n != 1 {
		t.Errorf("%d DHCP clients on v0, want 1:\n%s", n, out)
	}
	return dir
}
