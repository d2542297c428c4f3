#!/bin/bash
# Build the vmfest tiny Linux guest image.
#
# Usage: guest/build-image.sh OUTDIR
#
# Produces OUTDIR/vmfest-tiny.qcow2 and OUTDIR/vmfest-tiny.meta (image spec).
# Downloads are cached in OUTDIR/cache. Runs as root on Debian 12 (amd64);
# missing apt packages are installed. Nothing is mounted and no loop devices
# are used. Set FORCE=1 to rebuild even if the inputs did not change.
set -euo pipefail

die() { echo "build-image: $*" >&2; exit 1; }
log() { echo "build-image: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
[ "$(id -u)" -eq 0 ] || die "must run as root"
[ "$(dpkg --print-architecture)" = amd64 ] || die "amd64 host required"

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
CACHE=$OUT/cache
mkdir -p "$CACHE"
NAME=vmfest-tiny
ROOT_PASSWORD=vmfest
export LC_ALL=C

# ---------------------------------------------------------------- packages
PKGS=(busybox-static dropbear-bin syslinux syslinux-common mtools dosfstools fdisk qemu-utils cpio lz4)
missing=()
for p in "${PKGS[@]}"; do
	dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is dynamically linked; install busybox-static"

GO=$(command -v go || true)
[ -n "$GO" ] || GO=/usr/local/go/bin/go
[ -x "$GO" ] || die "go toolchain not found (PATH or /usr/local/go/bin/go)"
if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
	export GOCACHE=$CACHE/go-build
fi

# ---------------------------------------------------------------- kernel
kdeps() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'; }
KPKG=$(kdeps)
if [ -z "$KPKG" ]; then
	apt-get update -qq
	KPKG=$(kdeps)
fi
[ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64"
KVER=${KPKG#linux-image-}
KDEB=$(ls "$CACHE/${KPKG}"_*.deb 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$KDEB" ]; then
	log "downloading $KPKG"
	(cd "$CACHE" && apt-get download -q -o APT::Sandbox::User=root "$KPKG" >/dev/null)
	KDEB=$(ls "$CACHE/${KPKG}"_*.deb | sort -V | tail -n 1)
fi
KDIR=$CACHE/$(basename "$KDEB" .deb)
if [ ! -f "$KDIR/.done" ]; then
	log "extracting $(basename "$KDEB")"
	rm -rf "$KDIR" "$KDIR.tmp"
	dpkg-deb -x "$KDEB" "$KDIR.tmp"
	# The package has no modules.dep (depmod runs at install time).
	busybox depmod -b "$KDIR.tmp" "$KVER"
	touch "$KDIR.tmp/.done"
	mv "$KDIR.tmp" "$KDIR"
fi
MODDIR=$KDIR/lib/modules/$KVER
VMLINUZ=$KDIR/boot/vmlinuz-$KVER
[ -f "$VMLINUZ" ] && [ -f "$MODDIR/modules.dep" ] || die "bad kernel tree $KDIR"

# ---------------------------------------------------------------- up to date?
inputs_hash() {
	{
		echo "$KDEB"
		dpkg-query -W busybox-static dropbear-bin syslinux syslinux-common lz4
		"$GO" version
		(cd "$HERE" && find . -path ./.git -prune -o -type f ! -name '*_test.go' ! -name '*.md' ! -name 'smoketest.py' -print0 | sort -z | xargs -0 sha256sum)
		[ -f "$REPO/go.mod" ] && sha256sum "$REPO/go.mod"
	} | sha256sum | cut -d' ' -f1
}
HASH=$(inputs_hash)
if [ "${FORCE:-0}" != 1 ] && [ -f "$OUT/$NAME.qcow2" ] && [ -f "$OUT/$NAME.meta" ] &&
	[ "$(cat "$OUT/.$NAME.inputs" 2>/dev/null)" = "$HASH" ]; then
	log "$OUT/$NAME.qcow2 is up to date"
	exit 0
fi

WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R=$WORK/root

# ---------------------------------------------------------------- agent
log "building agent"
if [ -f "$REPO/go.mod" ]; then
	(cd "$REPO" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags='-s -w' -o "$WORK/vmfest-agent" ./guest/agent)
else
	# The repository has no go.mod yet: build from a throwaway module.
	mkdir "$WORK/mod"
	ln -s "$HERE" "$WORK/mod/guest"
	printf 'module github.com/vmfest/vmfest\n\ngo 1.22\n' >"$WORK/mod/go.mod"
	(cd "$WORK/mod" && CGO_ENABLED=0 GOFLAGS=-mod=mod "$GO" build -trimpath -ldflags='-s -w' -o "$WORK/vmfest-agent" ./guest/agent)
fi

# ---------------------------------------------------------------- root fs
log "assembling root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,run,tmp,root,var/log,mnt}
chmod 1777 "$R/tmp"
chmod 700 "$R/root"
ln -s ../run "$R/var/run"

# busybox and its applets
cp /bin/busybox "$R/bin/busybox"
while read -r applet; do
	[ -e "$R/$applet" ] || [ -L "$R/$applet" ] && continue
	mkdir -p "$R/$(dirname "$applet")"
	ln -s /bin/busybox "$R/$applet"
done < <(/bin/busybox --list-full)
ln -sf /bin/busybox "$R/init" # busybox init, configured by /etc/inittab

# dropbear and its shared libraries (+ the dynamic loader)
DROPBEAR=/usr/sbin/dropbear
cp "$DROPBEAR" "$R/usr/sbin/dropbear"
cp /usr/bin/dropbearkey "$R/usr/bin/dropbearkey"
for bin in "$DROPBEAR" /usr/bin/dropbearkey; do
	ldd "$bin" | awk '/=> \// { print $3 } /^\t\// { print $1 }'
done | sort -u | while read -r lib; do
	mkdir -p "$R/$(dirname "$lib")"
	cp -L "$lib" "$R/$lib"
done

# the agent
install -m 755 "$WORK/vmfest-agent" "$R/sbin/vmfest-agent"

# kernel modules, in dependency order, in four lists that rcS loads: the
# virtio and the storage lists side by side (libata waits ~150 ms after
# resetting each IDE channel, and insmod waits for that probe; the virtio
# list runs meanwhile), then the late list, which needs modules of both,
# and once the agent runs, the after list: devices vmfest does not give a
# machine, which nothing waits for. The two parallel lists must not share a
# module: a module loading in one list would not yet be there for a module
# of the other that needs it.
MODS_VIRTIO=(virtio_pci virtio_blk virtio_net virtio_console)
MODS_STORAGE=(ata_piix ata_generic sd_mod sr_mod isofs vfat nls_cp437 nls_ascii nls_utf8)
MODS_LATE=(virtio_scsi button evdev)
MODS_AFTER=(virtio_rng virtio_balloon vmw_vsock_virtio_transport)
declare -A moddeps=() seen=() group=()
while IFS=: read -r path deps; do
	moddeps[$path]=$deps
	m=${path##*/}
	m=${m%.ko}
	moddeps[name:${m//-/_}]=$path
done <"$MODDIR/modules.dep"
order=()
addmod() { # addmod path
	local p=$1 d
	[ -n "${seen[$p]:-}" ] && return
	seen[$p]=1
	for d in ${moddeps[$p]}; do addmod "$d"; done
	order+=("$p")
}
mkdir -p "$R/lib/modules"
modlist() { # modlist LIST MODULE...: writes the modules and their deps not yet listed
	local list=$1 m p
	shift
	order=()
	for m in "$@"; do
		p=${moddeps[name:$m]:-}
		[ -n "$p" ] || die "module $m not found in $KVER"
		addmod "$p"
	done
	: >"$R/lib/modules/$list"
	for p in "${order[@]}"; do
		m=${p##*/}
		cp "$MODDIR/$p" "$R/lib/modules/$m"
		echo "$m" >>"$R/lib/modules/$list"
		group[$p]=$list
	done
}
modlist virtio.order "${MODS_VIRTIO[@]}"
modlist storage.order "${MODS_STORAGE[@]}"
for p in "${!group[@]}"; do
	[ "${group[$p]}" = storage.order ] || continue
	for d in ${moddeps[$p]}; do
		if [ "${group[$d]:-}" = virtio.order ]; then
			die "module ${p##*/} (storage) needs ${d##*/} (virtio): move one so the parallel lists share nothing"
		fi
	done
done
modlist late.order "${MODS_LATE[@]}"
modlist after.order "${MODS_AFTER[@]}"

# configuration: files from guest/rootfs, plus generated ones
cp -a "$HERE/rootfs/." "$R/"
HASHFILE=$CACHE/root-password.hash
if [ ! -s "$HASHFILE" ] || ! grep -q "^$ROOT_PASSWORD " "$HASHFILE.src" 2>/dev/null; then
	busybox mkpasswd -m sha512 "$ROOT_PASSWORD" >"$HASHFILE"
	echo "$ROOT_PASSWORD " >"$HASHFILE.src"
fi
printf 'root:%s:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' \
	"$(cat "$HASHFILE")" >"$R/etc/shadow"
chmod 600 "$R/etc/shadow"
mkdir -p "$R/etc/dropbear"
echo "$KVER" >"$R/etc/vmfest-kernel"
: >"$R/etc/resolv.conf"

# ---------------------------------------------------------------- initramfs
# LZ4 (the kernel's legacy LZ4 format, -l): 16 % larger than gzip -6 but
# unpacked in a third of the time, which under TCG saves more than the
# firmware spends reading the extra bytes, even over IDE.
log "packing initramfs"
(cd "$R" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0) | lz4 -q -l -9 >"$WORK/initrd.img"

# ---------------------------------------------------------------- disk
# Kernel arguments that shorten the boot (measured under TCG, where the
# guest's CPU is slow; see docs/images.md): the crypto self-tests, and the
# KDF self-test that runs regardless, take ~0.35 s and check code a test
# guest does not rely on; without the local APIC timer the kernel skips its
# 100 ms calibration and ticks from the HPET.
KERNEL_BOOT_ARGS="cryptomgr.notests initcall_blacklist=crypto_kdf108_init noapictimer"
log "writing disk"
cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT vmfest
PROMPT 0
TIMEOUT 0
LABEL vmfest
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0,115200 quiet loglevel=3 8250.nr_uarts=4 panic=10 $KERNEL_BOOT_ARGS
EOF
# partition size: contents + 4 MiB slack, in MiB, at least 16 MiB
need=$(( ($(stat -c %s "$VMLINUZ") + $(stat -c %s "$WORK/initrd.img") + 4 * 1048576) / 1048576 + 1 ))
[ $need -lt 16 ] && need=16
PART=$WORK/part.img
mkfs.vfat -F 16 -n VMFEST -h 2048 -C "$PART" $((need * 1024)) >/dev/null
mcopy -i "$PART" "$VMLINUZ" ::/vmlinuz
mcopy -i "$PART" "$WORK/initrd.img" ::/initrd.img
mcopy -i "$PART" "$WORK/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$PART"
DISK=$WORK/disk.raw
truncate -s $(( (need + 1) * 1048576 )) "$DISK"
echo 'start=2048, type=0e, bootable' | sfdisk -q --label dos "$DISK"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$DISK" bs=440 count=1 conv=notrunc status=none
dd if="$PART" of="$DISK" bs=1M seek=1 conv=notrunc,sparse status=none

qemu-img convert -q -O qcow2 "$DISK" "$WORK/$NAME.qcow2"
cat >"$WORK/$NAME.meta" <<EOF
{
  "location": "$NAME.qcow2",
  "immutable": true,
  "os-family": "linux",
  "os-version": "debian-12-tiny",
  "os-64-bit": true,
  "username": "root",
  "password": "$ROOT_PASSWORD",
  "description": "vmfest tiny test guest (busybox, dropbear, vmfest agent)",
  "cloud-init": true
}
EOF
mv -f "$WORK/$NAME.qcow2" "$OUT/$NAME.qcow2"
mv -f "$WORK/$NAME.meta" "$OUT/$NAME.meta"
echo "$HASH" >"$OUT/.$NAME.inputs"
log "wrote $OUT/$NAME.qcow2 ($(du -h "$OUT/$NAME.qcow2" | cut -f1)), kernel $KVER, initramfs $(du -h "$WORK/initrd.img" | cut -f1)"
