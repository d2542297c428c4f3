#!/usr/bin/env bash
# make demo: create a machine from the tiny image, start it, show it running.
set -euo pipefail
vmfest=$1 meta=$2
name=${DEMO_NAME:-demo}
if "$vmfest" show "$name" >/dev/null 2>&1; then
  echo "== removing the previous $name machine"
  "$vmfest" destroy --force "$name"
fi
echo "== vmfest create $name --image $meta --hardware micro"
"$vmfest" create "$name" --image "$meta" --hardware micro
echo "== vmfest start $name --wait"
"$vmfest" start "$name" --wait=3m
echo "== vmfest list"
"$vmfest" list
echo "== vmfest show $name"
"$vmfest" show "$name"
echo "== vmfest console $name (last lines)"
"$vmfest" console "$name" | tail -n 15
cat <<TXT

The machine runs on; QEMU is detached from this shell.
  $vmfest stop $name        # ACPI power button, clean shutdown
  $vmfest destroy $name     # remove it (its base image is untouched)
TXT
