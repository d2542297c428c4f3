#!/usr/bin/env python3
"""Boot the vmfest tiny image under QEMU (TCG) and exercise it.

Usage: guest/smoketest.py IMAGE.qcow2 [--disk ide|virtio|scsi] [--machine pc|q35]
                          [--ssh] [--keep-log]

Starts QEMU with the disk (snapshot=on), a virtio-serial guest-agent port, a
virtio-net NIC on user-mode networking and a QMP socket; measures the time
until the agent answers guest-sync; runs guest-ping and
guest-network-get-interfaces (waits for 10.0.2.15); optionally logs in with
ssh (password "vmfest", needs sshpass) through a host port forward; then sends
QMP system_powerdown and checks that QEMU exits by itself.
Exits non-zero on failure. Cleans up QEMU and its temp dir.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def connect(path, timeout):
    end = time.time() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.time() > end:
                raise
            time.sleep(0.05)


class Lines:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def send(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self, timeout):
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("--disk", default="ide", choices=["ide", "virtio", "scsi"])
    ap.add_argument("--machine", default="pc")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--ssh", action="store_true")
    ap.add_argument("--cidata", help="attach this ISO as an IDE cdrom (pc) / scsi-cd")
    ap.add_argument("--keep-log", action="store_true")
    ap.add_argument("--shutdown", default="acpi", choices=["acpi", "agent", "ssh"],
                    help="how to stop the guest: QMP system_powerdown, guest-shutdown, or poweroff over ssh")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="vmfest-smoke-")
    serial = os.path.join(tmp, "serial.log")
    qga_path = os.path.join(tmp, "qga.sock")
    qmp_path = os.path.join(tmp, "qmp.sock")
    disk = {
        "ide": ["-device", "ide-hd,drive=d0,bus=ide.0,unit=0,bootindex=0"],
        "virtio": ["-device", "virtio-blk-pci,drive=d0,bootindex=0"],
        "scsi": ["-device", "virtio-scsi-pci,id=scsi0", "-device", "scsi-hd,drive=d0,bus=scsi0.0,bootindex=0"],
    }[args.disk]
    if args.disk == "ide" and args.machine.startswith("q35"):
        disk = ["-device", "ide-hd,drive=d0,bus=ide.0,bootindex=0"]
    fwd = ""
    ssh_port = None
    if args.ssh:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ssh_port = s.getsockname()[1]
        s.close()
        fwd = ",hostfwd=tcp:127.0.0.1:%d-:22" % ssh_port
    cmd = [args.qemu, "-machine", args.machine + ",accel=tcg", "-m", "256", "-nodefaults",
           "-display", "none", "-serial", "file:" + serial,
           "-drive", "file=%s,if=none,id=d0,format=qcow2,snapshot=on" % os.path.abspath(args.image)] + disk + [
           "-device", "virtio-serial-pci",
           "-chardev", "socket,id=qga0,path=%s,server=on,wait=off" % qga_path,
           "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
           "-netdev", "user,id=n0" + fwd, "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
           "-qmp", "unix:%s,server=on,wait=off" % qmp_path]
    if args.cidata:
        cmd += ["-drive", "file=%s,if=none,id=cd0,media=cdrom,readonly=on" % os.path.abspath(args.cidata)]
        cmd += ["-device", "ide-cd,drive=cd0,bus=ide.1,unit=0"]
    ok = False
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    try:
        qga = Lines(connect(qga_path, 10))
        # The agent is not there until the guest has booted: resend guest-sync
        # until it answers (replies to earlier syncs carry older ids).
        sync_id = 1000
        while True:
            if proc.poll() is not None:
                raise RuntimeError("qemu exited early with %s" % proc.returncode)
            if time.time() - t0 > 120:
                raise RuntimeError("agent did not answer within 120s")
            sync_id += 1
            qga.sock.sendall(b"\xff")
            qga.send({"execute": "guest-sync", "arguments": {"id": sync_id}})
            # Drain replies (including ones to earlier, queued syncs).
            got = False
            try:
                while not got:
                    reply = json.loads(qga.recv(0.5).lstrip(b"\xff"))
                    got = reply.get("return") == sync_id
            except socket.timeout:
                pass
            if got:
                break
        t_agent = time.time() - t0
        print("agent answered guest-sync after %.2fs" % t_agent)
        for line in open(serial, errors="replace"):
            if "vmfest-tiny:" in line:
                print("serial:", line.rstrip())

        qga.send({"execute": "guest-ping"})
        print("guest-ping:", qga.recv(5).decode())
        qga.send({"execute": "guest-sync-delimited", "arguments": {"id": 77}})
        r = qga.recv(5)
        assert r.startswith(b"\xff") and json.loads(r[1:]) == {"return": 77}, r
        qga.send({"execute": "no-such-command"})
        r = json.loads(qga.recv(5))
        assert r["error"]["class"] == "CommandNotFound", r
        qga.sock.sendall(b"{bad json}\n")
        r = json.loads(qga.recv(5))
        assert r["error"]["class"] == "GenericError", r
        qga.send({"execute": "guest-get-osinfo"})
        print("guest-get-osinfo:", qga.recv(5).decode())
        qga.send({"execute": "guest-get-host-name"})
        print("guest-get-host-name:", qga.recv(5).decode())
        end = time.time() + 30
        while True:
            qga.send({"execute": "guest-network-get-interfaces"})
            ifs = json.loads(qga.recv(5))["return"]
            addrs = [a["ip-address"] for i in ifs for a in i.get("ip-addresses", [])]
            if "10.0.2.15" in addrs or time.time() > end:
                break
            time.sleep(0.5)
        print("guest-network-get-interfaces:", json.dumps(ifs))
        assert "10.0.2.15" in addrs, "no DHCP address"
        print("dhcp address after %.2fs" % (time.time() - t0))

        if args.ssh:
            t = time.time()
            out = subprocess.run(
                ["sshpass", "-p", "vmfest", "ssh", "-p", str(ssh_port), "-o", "StrictHostKeyChecking=no",
                 "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1",
                 "uname -r; hostname; cat /proc/uptime; ip -4 addr show eth0 | grep inet; cat /etc/resolv.conf; ip route"],
                capture_output=True, text=True, timeout=120)
            print("ssh (%.1fs) rc=%d:\n%s%s" % (time.time() - t, out.returncode, out.stdout, out.stderr))
            assert out.returncode == 0

        qmp = Lines(connect(qmp_path, 5))
        qmp.recv(5)  # greeting
        qmp.send({"execute": "qmp_capabilities"})
        qmp.recv(5)
        t = time.time()
        if args.shutdown == "acpi":
            qmp.send({"execute": "system_powerdown"})
        elif args.shutdown == "agent":
            qga.send({"execute": "guest-shutdown"})
        else:
            subprocess.run(
                ["sshpass", "-p", "vmfest", "ssh", "-p", str(ssh_port), "-o", "StrictHostKeyChecking=no",
                 "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@127.0.0.1", "poweroff"],
                timeout=60)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            raise RuntimeError("qemu did not exit within 30s of %s shutdown" % args.shutdown)
        print("qemu exited %.2fs after %s shutdown (rc=%d)" % (time.time() - t, args.shutdown, proc.returncode))
        ok = True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not ok or args.keep_log:
            try:
                print("---- serial log ----")
                print(open(serial, errors="replace").read())
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
