#!/usr/bin/env bash
# Builds BUILD/vmfest_<version>_amd64.deb with dpkg-deb from
# packaging/deb: the binary, the system instance's unit (vmfest.service),
# the groups (sysusers.d), man pages and bash/zsh/fish completions
# generated from the cobra commands. Prints the .deb's path on its last
# line. Usage: build-deb.sh [BUILD_DIR]
#
# build-deb.sh --test [BUILD_DIR] (as root; make test-deb) builds it, runs
# lintian (errors fail), installs it with dpkg -i, checks the groups, the
# unit (systemd-analyze verify) and the system instance started as its
# ExecStart says, an upgrade with a machine running (the same QEMU serves
# on after the new server starts), removes it (/var/lib/vmfest stays) and
# purges it (gone).
# It refuses to run where vmfest is installed or /var/lib/vmfest exists.
set -euo pipefail
cd "$(dirname "$0")/.."
test=false
if [ "${1:-}" = --test ]; then
  test=true
  shift
fi
out=${1:-build}
export PATH=/usr/local/go/bin:$PATH

# A Debian version starts with a digit: 0.0~git<commit date>.<describe>.
desc=$(git describe --always --dirty 2>/dev/null || echo dev)
date=$(git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || date -u +%Y%m%d)
version=${VMFEST_DEB_VERSION:-0.0~git${date}.${desc//-/+}}
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

stage=$(mktemp -d "${TMPDIR:-/tmp}/vmfest-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
doc=$root/usr/share/doc/vmfest
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" \
  "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" "$doc"

# With cgo (the system's group lookups, as Debian's lintian expects a
# dynamically linked binary): the package needs the newest glibc symbol
# version the binary uses.
go build -trimpath -buildmode=pie -ldflags "-s -w -X main.version=$version -linkmode=external -extldflags=-Wl,-z,relro,-z,now" -o "$root/usr/bin/vmfest" ./cmd/vmfest
glibc=$(readelf --dyn-syms -W "$root/usr/bin/vmfest" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
[ -n "$glibc" ] || { echo "build-deb: cannot tell the glibc version vmfest needs" >&2; exit 1; }
"$root/usr/bin/vmfest" package-docs --man "$stage/man" --completions "$stage/completions"
for f in "$stage"/man/*.1; do
  gzip -9n <"$f" >"$root/usr/share/man/man1/$(basename "$f").gz"
done
install -m 0644 "$stage/completions/vmfest.bash" "$root/usr/share/bash-completion/completions/vmfest"
install -m 0644 "$stage/completions/_vmfest" "$root/usr/share/zsh/vendor-completions/_vmfest"
install -m 0644 "$stage/completions/vmfest.fish" "$root/usr/share/fish/vendor_completions.d/vmfest.fish"
install -m 0644 packaging/deb/vmfest.service "$root/lib/systemd/system/vmfest.service"
install -m 0644 packaging/deb/vmfest.sysusers "$root/usr/lib/sysusers.d/vmfest.conf"
install -m 0644 packaging/deb/copyright "$doc/copyright"
{
  printf 'vmfest (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * Built from %s.\n\n' "$desc"
  printf ' -- vmfest developers <vmfest@users.noreply.github.com>  %s\n' "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"
for s in postinst prerm postrm; do
  install -m 0755 "packaging/deb/$s" "$root/DEBIAN/$s"
done
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" -e "s/@LIBC@/$glibc/" packaging/deb/control.in >"$root/DEBIAN/control"
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control"
find "$root" -type d -exec chmod 0755 {} +
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb=$out/vmfest_${version}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"

$test || exit 0

# ---- make test-deb ----
fail() { echo "test-deb: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
dpkg -s vmfest >/dev/null 2>&1 && fail "vmfest is already installed here: remove it first (dpkg -r vmfest)"
[ -e /var/lib/vmfest ] && fail "/var/lib/vmfest exists: the test would purge it; move it away first"
command -v lintian >/dev/null || fail "lintian is missing (make deps)"
lint=$(lintian "$deb" 2>&1 | grep -v 'running with root privileges' || true)
[ -n "$lint" ] && echo "$lint"
grep -q '^E:' <<<"$lint" && fail "lintian reports errors"

serve_pid=
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  # A machine the test started and did not destroy (it failed on the way).
  pkill -KILL -f -- '/var/lib/vmfest/machines/upg/' 2>/dev/null || true
  dpkg -s vmfest >/dev/null 2>&1 && dpkg --purge vmfest >/dev/null
  rm -rf "$stage"
}
trap cleanup EXIT
dpkg -i "$deb" >/dev/null
[ -x /usr/bin/vmfest ] || fail "/usr/bin/vmfest missing after dpkg -i"
for g in vmfest vmfest-admin; do getent group "$g" >/dev/null || fail "group $g missing after dpkg -i"; done
man -w vmfest-serve >/dev/null || fail "no man page vmfest-serve"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify /lib/systemd/system/vmfest.service || fail "systemd-analyze verify vmfest.service"
fi
# Start the system instance as the unit does (these machines have no
# systemd as PID 1).
exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/vmfest.service)
$exec_start >"$stage/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 100); do
  [ -S /run/vmfest/vmfest.sock ] && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$stage/serve.log" >&2; fail "serve --system ended"; }
  sleep 0.1
done
[ "$(stat -c '%U:%G %a' /run/vmfest/vmfest.sock)" = "root:vmfest 660" ] || fail "socket is $(stat -c '%U:%G %a' /run/vmfest/vmfest.sock), want root:vmfest 660"
vmfest --server unix:///run/vmfest/vmfest.sock list >/dev/null || fail "list over the system socket"
# A user in group vmfest finds the socket by itself; one outside is told how to get access.
gid=$(getent group vmfest | cut -d: -f3)
said=$(setpriv --reuid=nobody --regid=nogroup --groups="$gid" env -u VMFEST_HOME -u VMFEST_SERVER HOME=/nonexistent vmfest -v list 2>&1) ||
  fail "a member of vmfest cannot list: $said"
grep -q 'using the system vmfest server at unix:///run/vmfest/vmfest.sock' <<<"$said" || fail "a member of vmfest does not use the system socket: $said"
said=$(setpriv --reuid=nobody --regid=nogroup --clear-groups env -u VMFEST_HOME -u VMFEST_SERVER HOME=/nonexistent vmfest list 2>&1) &&
  fail "a user outside vmfest could list: $said"
grep -q 'join the group vmfest' <<<"$said" || fail "a user outside vmfest is not told how to get access: $said"
# An upgrade keeps running machines running: a machine (NAT only, the tiny
# image) runs; the package is installed again (dpkg runs the upgrade's
# maintainer scripts: prerm upgrade, postinst configure OLD-VERSION); the
# server is stopped as systemd stops it (SIGTERM to it alone) and the new
# one started; it serves the same QEMU process.
sys=(vmfest --server unix:///run/vmfest/vmfest.sock)
pid_of() { "${sys[@]}" --json show "$1" | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$'; }
meta=$(readlink -f "$out/vmfest-tiny.meta")
[ -f "$meta" ] || fail "no tiny image at $meta (make image)"
printf 'memory-size: 256\ncpu-count: 1\nnetwork:\n  - attachment-type: nat\n' >"$stage/nat.yaml"
"${sys[@]}" create upg --image "$meta" --hardware "$stage/nat.yaml" >/dev/null || fail "create a machine on the system instance"
"${sys[@]}" start upg --wait 120s >/dev/null || fail "start a machine on the system instance"
qemu=$(pid_of upg) && [ -n "$qemu" ] || fail "no pid for the running machine"
dpkg -i "$deb" >/dev/null || fail "dpkg -i over the installed package"
kill "$serve_pid"; wait "$serve_pid" || true; serve_pid=
kill -0 "$qemu" 2>/dev/null || fail "the machine's QEMU (pid $qemu) ended with the server"
$exec_start >>"$stage/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 100); do
  "${sys[@]}" list >/dev/null 2>&1 && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$stage/serve.log" >&2; fail "serve --system ended after the upgrade"; }
  sleep 0.1
done
[ "$(pid_of upg)" = "$qemu" ] || fail "after the upgrade the machine is not the same running QEMU (pid $qemu): $("${sys[@]}" show upg 2>&1)"
"${sys[@]}" ssh upg --wait 60s -- true || fail "ssh to the machine after the upgrade"
"${sys[@]}" destroy --force upg >/dev/null || fail "destroy the machine"
kill "$serve_pid"; wait "$serve_pid" || true; serve_pid=
dpkg -r vmfest >/dev/null
[ -e /usr/bin/vmfest ] && fail "/usr/bin/vmfest left after dpkg -r"
[ -d /var/lib/vmfest ] || fail "dpkg -r removed /var/lib/vmfest"
dpkg --purge vmfest >/dev/null
[ -e /var/lib/vmfest ] && fail "dpkg --purge left /var/lib/vmfest"
echo "test-deb: ok ($deb)"
