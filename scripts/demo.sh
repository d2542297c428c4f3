#!/usr/bin/env bash
# make demo: install the tiny image as an image model from a local web
# server (as a user installs a published image), create a machine from it,
# start it and show it running.
#
# Usage: scripts/demo.sh VMFEST BUILD-DIR
set -euo pipefail
vmfest=$1 build=$2
name=${DEMO_NAME:-demo}
port=${DEMO_PORT:-8808}
url=http://127.0.0.1:$port/vmfest-tiny.qcow2.gz

# Publish build/ (vmfest-tiny.qcow2.gz, .sha256 and .meta) on loopback only.
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$build" >/dev/null 2>&1 &
web=$!
trap 'kill $web 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$web" 2>/dev/null || { echo "demo: the web server on 127.0.0.1:$port did not start (port taken? set DEMO_PORT)" >&2; exit 1; }
  sleep 0.1
done

if "$vmfest" show "$name" >/dev/null 2>&1; then
  echo "== removing the previous $name machine"
  "$vmfest" destroy --force "$name"
fi
if "$vmfest" model show vmfest-tiny >/dev/null 2>&1; then
  echo "== vmfest model add $url --replace"
  "$vmfest" model add "$url" --replace ||
    echo "(other machines use the installed vmfest-tiny: keeping it)"
else
  echo "== vmfest model add $url"
  "$vmfest" model add "$url"
fi
echo "== vmfest models"
"$vmfest" models
echo "== vmfest create $name --image vmfest-tiny --hardware micro"
"$vmfest" create "$name" --image vmfest-tiny --hardware micro
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
  $vmfest stop $name             # ACPI power button, clean shutdown
  $vmfest destroy $name          # remove it (the vmfest-tiny model is untouched)
  $vmfest model rm vmfest-tiny   # once no machine uses it
TXT
