#!/usr/bin/env bash
# Package the tiny guest as a published image, the way `vmfest model add`
# expects one: OUTDIR/vmfest-tiny.qcow2.gz and OUTDIR/vmfest-tiny.sha256
# (sha256sum format) beside OUTDIR/vmfest-tiny.meta.
#
# Usage: scripts/package-image.sh OUTDIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
out=$1
img=$out/vmfest-tiny.qcow2 gz=$out/vmfest-tiny.qcow2.gz sums=$out/vmfest-tiny.sha256
[ -f "$img" ] || { echo "package-image: $img is missing (make image builds it)" >&2; exit 1; }
if [ "$gz" -nt "$img" ] && [ "$sums" -nt "$gz" ]; then
	exit 0 # up to date
fi
# -n: no name or time stamp in the header, so the same image gives the same file.
gzip -n -6 -c "$img" > "$gz.tmp"
mv "$gz.tmp" "$gz"
(cd "$out" && sha256sum vmfest-tiny.qcow2.gz > vmfest-tiny.sha256.tmp && mv vmfest-tiny.sha256.tmp vmfest-tiny.sha256)
echo "package-image: $(du -h "$gz" | cut -f1) $gz, $(cut -c1-16 "$sums")... in $sums" >&2
