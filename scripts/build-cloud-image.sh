#!/bin/bash
# Build a real Debian 12 cloud image for vmfest's cloud-init suite
# (make test-cloud): cloud-init, qemu-guest-agent and OpenSSH on
# linux-image-cloud-amd64, from Debian's own packages with debootstrap.
#
# Usage: scripts/build-cloud-image.sh OUTDIR
#
# Produces OUTDIR/debian-cloud.qcow2 (a 2 GiB virtual disk, compressed qcow2)
# and OUTDIR/debian-cloud.meta (its image spec). Runs as root on a Debian
# amd64 host; debootstrap and extlinux are installed if missing. Packages
# come from the Debian mirror the host's apt already uses, and nothing else
# is downloaded. Skips the build when both outputs are newer than this
# script; FORCE=1 rebuilds anyway.
#
# What the image honours (see cloudinit/cloudinit.go for vmfest's seed):
#   - cloud-init with the NoCloud datasource only: the seed is the cidata
#     CD-ROM (meta-data instance-id and local-hostname, user-data with the
#     user's keys, network-config v2 matched by MAC);
#   - network-config rendered for systemd-networkd (DHCP per NIC);
#   - qemu-guest-agent, started by udev when the virtio-serial port
#     org.qemu.guest_agent.0 appears;
#   - cloud-init's growpart and resizefs modules: partition 1 is the last
#     partition of the disk, ext4, so a larger overlay grows it at boot;
#   - the console on ttyS0 (what vmfest's console log records).
set -euo pipefail

die() { echo "build-cloud-image: $*" >&2; exit 1; }
log() { echo "build-cloud-image: $(date +%T) $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, a loop mount)"
[ "$(dpkg --print-architecture)" = amd64 ] || die "amd64 host required"

SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
NAME=debian-cloud
SUITE=bookworm
USERNAME=debian         # Debian's cloud-init default user; vmfest's seed gives it the keys
DISK_MIB=2048           # virtual size of the disk
PART_START=2048         # partition 1 starts at 1 MiB (sectors of 512 bytes)
# A fixed file-system UUID, so the boot line and fstab do not depend on
# the run and the same script gives the same configuration.
ROOT_UUID=8d1a7c5e-6b2f-4c3e-9a0d-76e5c10c1d00
export LC_ALL=C DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- up to date?
# Like scripts/package-image.sh: the outputs are current when they are
# newer than the script that makes them.
if [ "${FORCE:-0}" != 1 ] && [ "$OUT/$NAME.qcow2" -nt "$SELF" ] && [ "$OUT/$NAME.meta" -nt "$SELF" ]; then
	log "$OUT/$NAME.qcow2 is up to date"
	exit 0
fi

# ---------------------------------------------------------------- host tools
# debootstrap makes the root; extlinux (with syslinux-common's mbr.bin)
# makes it bootable by SeaBIOS from an IDE disk without grub.
need=()
for p in debootstrap extlinux syslinux-common qemu-utils fdisk e2fsprogs; do
	dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The mirror: the same one the host's apt uses (deb822 or one-line format),
# so the build reaches only the package registry the host already trusts.
MIRROR=$(
	{
		awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
		awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
	} | grep -E '/debian/?$' | head -n 1 || true
)
[ -n "$MIRROR" ] || die "no Debian mirror (…/debian) in /etc/apt/sources.list or sources.list.d"
# Security updates too when the host has them (the kernel's fixes come there).
SECURITY=$(
	{
		awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
		awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
	} | grep -E '/debian-security/?$' | head -n 1 || true
)
log "mirror $MIRROR${SECURITY:+, security $SECURITY}"

# ---------------------------------------------------------------- cleanup
# Everything is built in WORK; every mount and loop device is undone on any
# exit, in reverse order, whether the build succeeded or not.
WORK=$(mktemp -d "$OUT/.cloud-build.XXXXXX")
R=$WORK/root
MNT=$WORK/mnt
MOUNTS=()
LOOP=
cleanup() {
	local i
	for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
		umount -l "${MOUNTS[$i]}" 2>/dev/null || true
	done
	[ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bindmount() { # bindmount SRC DST [mount options...]
	local src=$1 dst=$2
	shift 2
	mkdir -p "$dst"
	mount "$@" "$src" "$dst"
	MOUNTS+=("$dst")
}

# ---------------------------------------------------------------- base system
# A minbase bootstrap (Essential and Required packages only); downloaded
# .debs are kept in OUTDIR/cache so a FORCE=1 rebuild reuses them.
CACHE=$OUT/cache/debian-cloud
mkdir -p "$CACHE/debootstrap" "$CACHE/apt"
log "debootstrap $SUITE (minbase)"
debootstrap --variant=minbase --arch=amd64 --cache-dir="$CACHE/debootstrap" \
	"$SUITE" "$R" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
	{ tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

# ---------------------------------------------------------------- packages
# The chroot needs /proc, /sys and /dev for the kernel's and initramfs'
# maintainer scripts. policy-rc.d keeps services from starting inside it.
bindmount proc "$R/proc" -t proc
bindmount sysfs "$R/sys" -t sysfs
bindmount /dev "$R/dev" --bind
bindmount /dev/pts "$R/dev/pts" --bind
bindmount "$CACHE/apt" "$R/var/cache/apt/archives" --bind
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod 755 "$R/usr/sbin/policy-rc.d"
cat >"$R/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
EOF
[ -z "$SECURITY" ] || echo "deb $SECURITY $SUITE-security main" >>"$R/etc/apt/sources.list"
# The initramfs carries only the drivers for the disks vmfest gives (IDE,
# SATA, virtio, SCSI; ext4 is built into the kernel), not initramfs-tools'
# default "most": SeaBIOS loads it by slow PIO reads under TCG.
mkdir -p "$R/etc/initramfs-tools/conf.d"
echo MODULES=list >"$R/etc/initramfs-tools/conf.d/vmfest"
printf '%s\n' ata_piix ata_generic ahci sd_mod virtio_pci virtio_blk virtio_scsi >>"$R/etc/initramfs-tools/modules"
PKGS=(
	systemd-sysv udev           # init, and the udev rule that starts the guest agent
	linux-image-cloud-amd64     # Debian's kernel for virtual machines (ata_piix, virtio, isofs)
	initramfs-tools             # finds the root by UUID
	cloud-init                  # NoCloud seed: host name, user, keys, network, user-data
	qemu-guest-agent            # what vmfest's WaitReady and exec talk to
	openssh-server              # vmfest ssh, as the image's user with vmfest's key
	sudo                        # the seed gives the user passwordless sudo
	cloud-guest-utils fdisk     # growpart (and the sfdisk it drives) for cloud-init's growpart module
	e2fsprogs                   # resize2fs for cloud-init's resizefs module
	iproute2 netbase            # cloud-init reads the links and addresses with ip
	locales                     # cloud-init's locale module (the locale is made here, once)
	ca-certificates less nano   # a usable shell for a person logged in
)
log "installing ${PKGS[*]}"
chroot "$R" apt-get update -qq
chroot "$R" apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >"$WORK/apt.log" 2>&1 ||
	{ tail -n 30 "$WORK/apt.log" >&2; die "apt-get install failed (log above)"; }
KVER=$(ls "$R/lib/modules" | sort -V | tail -n 1)
[ -f "$R/boot/vmlinuz-$KVER" ] && [ -f "$R/boot/initrd.img-$KVER" ] || die "no kernel or initramfs for $KVER in /boot"

# ---------------------------------------------------------------- configuration
# cloud-init: only the NoCloud datasource (the cidata CD-ROM vmfest
# attaches; "None" lets it finish without one); network-config rendered for
# systemd-networkd, which has its own DHCP client.
cat >"$R/etc/cloud/cloud.cfg.d/90_vmfest.cfg" <<'EOF'
# vmfest: the seed comes from a NoCloud CD-ROM labelled cidata.
datasource_list: [NoCloud, None]
system_info:
  network:
    renderers: [networkd]
# Host keys of the two kinds OpenSSH and Go's client prefer: generating a
# 3072-bit RSA key and a DSA key takes seconds under TCG.
ssh_genkeytypes: [ed25519, ecdsa]
# Nothing to print on the console, no grub to configure.
ssh:
  emit_keys_to_console: false
grub_dpkg:
  enabled: false
EOF
systemctl --root="$R" enable systemd-networkd.service >/dev/null 2>&1
# network-online.target (which cloud-init's later stages order after) is
# reached when any one link is up, within 30 s, not when every link is: an
# internal-network NIC without DHCP must not hold the boot for 2 minutes.
mkdir -p "$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$R/etc/systemd/system/systemd-networkd-wait-online.service.d/vmfest.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOF
# qemu-guest-agent is started by udev (its BindsTo on the virtio port);
# enable it too, so it also starts when the port is there before udev runs.
systemctl --root="$R" enable qemu-guest-agent.service >/dev/null 2>&1 || true
# The locale cloud-init asks for, generated now rather than at each first boot.
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$R/etc/locale.gen"
chroot "$R" locale-gen >/dev/null
echo 'LANG=en_US.UTF-8' >"$R/etc/default/locale"
# File systems and host name (cloud-init sets the real one).
echo "UUID=$ROOT_UUID / ext4 defaults,errors=remount-ro 0 1" >"$R/etc/fstab"
echo localhost >"$R/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
# No timers that wake up apt on a test machine, and no e2scrub: its reaper
# holds multi-user.target (and so cloud-init's final stage) for over a
# minute under TCG, and there is no LVM to scrub.
for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service; do
	systemctl --root="$R" mask "$t" >/dev/null 2>&1 || true
done
# Per-instance identity is made at first boot: no machine-id, no SSH host
# keys (cloud-init's ssh module generates them), no cloud-init state.
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id" "$R"/etc/ssh/ssh_host_*
rm -rf "$R/var/lib/cloud"/*
# Leave the chroot's scaffolding behind.
rm -f "$R/usr/sbin/policy-rc.d"
for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[$i]}"; done
MOUNTS=()
# The .debs stay in the cache, outside the image (apt-get clean in the
# chroot would empty the cache through its bind mount).
rm -rf "$R/var/cache/apt"/*.bin "$R/var/cache/apt/archives"/*.deb "$R/var/lib/apt/lists"/* \
	"$R/var/log"/*.log "$R/var/log/apt"/* "$R/tmp"/* "$R/root/.bash_history"

# ---------------------------------------------------------------- boot loader
# extlinux reads /boot from the ext4 root; SeaBIOS runs syslinux's MBR,
# which chains to the active partition's boot sector that extlinux writes.
mkdir -p "$R/boot/extlinux"
cat >"$R/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  KERNEL /boot/vmlinuz-$KVER
  INITRD /boot/initrd.img-$KVER
  APPEND root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200 net.ifnames=1 panic=10
EOF

# ---------------------------------------------------------------- disk
# One MBR partition from 1 MiB to the end of the 2 GiB disk: the last
# partition, so growpart can grow it when the overlay is larger.
log "writing disk ($DISK_MIB MiB)"
DISK=$WORK/disk.raw
truncate -s "${DISK_MIB}M" "$DISK"
echo "start=$PART_START, type=83, bootable" | sfdisk -q --label dos "$DISK"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$DISK" bs=440 count=1 conv=notrunc status=none
PART_BYTES=$(( DISK_MIB * 1048576 - PART_START * 512 ))
# mkfs fills the file system from the root tree without mounting it.
# extlinux 6.04 cannot boot from 64bit ext4, so that feature is off (the
# file system still grows online to 16 TiB).
mkfs.ext4 -q -F -L root -U "$ROOT_UUID" -O ^64bit,^metadata_csum -E offset=$((PART_START * 512)) \
	-d "$R" "$DISK" "$((PART_BYTES / 1024))k"
# extlinux installs into a mounted file system: a loop device over the
# partition, mounted only for that.
LOOP=$(losetup --find --show --offset $((PART_START * 512)) --sizelimit "$PART_BYTES" "$DISK")
bindmount "$LOOP" "$MNT"
extlinux --install "$MNT/boot/extlinux" 2>/dev/null
umount "$MNT"
MOUNTS=()
losetup -d "$LOOP"
LOOP=

# ---------------------------------------------------------------- outputs
log "compressing"
qemu-img convert -q -c -O qcow2 "$DISK" "$WORK/$NAME.qcow2"
cat >"$WORK/$NAME.meta" <<EOF
{
  "location": "$NAME.qcow2",
  "immutable": true,
  "os-family": "linux",
  "os-version": "debian-12",
  "os-64-bit": true,
  "username": "$USERNAME",
  "description": "Debian 12 cloud image (cloud-init, qemu-guest-agent, OpenSSH), kernel $KVER",
  "cloud-init": true
}
EOF
mv -f "$WORK/$NAME.qcow2" "$OUT/$NAME.qcow2"
mv -f "$WORK/$NAME.meta" "$OUT/$NAME.meta"
log "wrote $OUT/$NAME.qcow2 ($(du -h "$OUT/$NAME.qcow2" | cut -f1) on disk, $DISK_MIB MiB virtual), kernel $KVER"
