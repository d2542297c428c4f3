#!/usr/bin/env bash
# Installs the Debian packages vmfest and its tests need, when missing.
# Idempotent; runs as root (or through sudo).
set -euo pipefail
# bubblewrap boxes every qemu-img run on an untrusted image (image/box.go); without it setup-model fails closed.
pkgs=(qemu-system-x86 qemu-utils dnsmasq-base iproute2 ca-certificates bubblewrap)
# libvirtd (with virtlogd) and its QEMU driver, for driver/libvirt; its tests start a libvirtd of their own.
# Not libvirt-daemon-system: it pulls in and upgrades systemd; scripts/libvirtd.sh starts libvirtd without it.
pkgs+=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
# ansible-core: the inventory test drives booted machines with the real ansible.
pkgs+=(ansible-core)
# With "deb" (make test-deb): lintian and readelf (binutils); dpkg-deb comes with dpkg.
[ "${1:-}" = deb ] && pkgs+=(lintian binutils)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# The demo serves the packaged image from a local web server (python3 -m http.server).
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v go >/dev/null || { echo "Go is needed: https://go.dev/dl (or /usr/local/go/bin on PATH)" >&2; exit 1; }
