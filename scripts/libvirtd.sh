#!/usr/bin/env bash
# Starts libvirtd and virtlogd as root on a host without systemd (a container,
# a CI runner) that has Debian's libvirt-daemon but not libvirt-daemon-system
# (`make deps` installs the former: the latter pulls in and upgrades systemd),
# so that vmfest's libvirt driver finds qemu:///system at
# /run/libvirt/libvirt-sock. With systemd and libvirt-daemon-system, use
# `systemctl start libvirtd` instead.
#
#   scripts/libvirtd.sh [start]   start what is not running, wait until libvirtd answers
#   scripts/libvirtd.sh stop      stop both (SIGTERM, as systemd would)
#
# Idempotent. driver/libvirt's tests do not need it: they start a libvirtd of
# their own in private mount, network and PID namespaces.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "libvirtd.sh: run as root" >&2; exit 1; }
PATH=$PATH:/usr/sbin:/sbin
command -v libvirtd >/dev/null || { echo "libvirtd.sh: libvirtd is not installed (make deps)" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

case "${1:-start}" in
start)
  # Debian's libvirtd runs QEMU as libvirt-qemu unless told otherwise and
  # refuses to start without that user; libvirt-daemon-system would make it.
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent passwd libvirt-qemu >/dev/null ||
    useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --no-create-home --shell /usr/sbin/nologin libvirt-qemu
  mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
  # virtlogd keeps each domain's console log (serial.log in the machine directory).
  alive /run/virtlogd.pid || virtlogd -d
  alive /run/libvirtd.pid || libvirtd -d
  for _ in $(seq 300); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.1
  done
  virsh -c qemu:///system version >/dev/null || { echo "libvirtd.sh: libvirtd did not answer within 30 s" >&2; exit 1; }
  # Where libvirt's QEMU user cannot open /dev/kvm (Debian's udev rule makes
  # it 0660 root:kvm; a container's may be 0600 root), libvirt 9.0 throws its
  # cached QEMU capabilities away at every define and start and probes QEMU
  # again, several seconds each time.
  if [ -e /dev/kvm ] && ! setpriv --reuid=libvirt-qemu --regid=libvirt-qemu --init-groups test -r /dev/kvm -a -w /dev/kvm 2>/dev/null; then
    echo "libvirtd.sh: warning: libvirt-qemu cannot open /dev/kvm: every vmfest start under libvirt will re-probe QEMU (slow); give it access (group kvm) or set user = \"root\" in /etc/libvirt/qemu.conf" >&2
  fi
  echo "libvirtd.sh: libvirtd answers at /run/libvirt/libvirt-sock (qemu:///system)"
  ;;
stop)
  for pidfile in /run/libvirtd.pid /run/virtlogd.pid; do
    alive "$pidfile" || continue
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "libvirtd.sh: $pidfile ($pid) did not stop within 10 s" >&2; exit 1; fi
  done
  ;;
*)
  echo "usage: $0 [start|stop]" >&2
  exit 2
  ;;
esac
