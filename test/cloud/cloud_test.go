// Package cloud_test boots vmfest machines from a real Debian cloud image
// (cloud-init, qemu-guest-agent, OpenSSH; scripts/build-cloud-image.sh) and
// checks that cloud-init honours what vmfest seeds. It runs only when
// VMFEST_CLOUD_IMAGE names the image's .meta (make test-cloud sets it), as
// root, inside network and PID namespaces of its own.
package cloud_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/internal/netnstest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// imageEnv names the cloud image's metadata file.
const imageEnv = "VMFEST_CLOUD_IMAGE"

func TestMain(m *testing.M) {
	if code, done := netnstest.Wrap(); done {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// cloudImage returns the cloud image's spec, its location made absolute,
// or skips the test when VMFEST_CLOUD_IMAGE is unset.
func cloudImage(t *testing.T) spec.Image {
	t.Helper()
	meta := os.Getenv(imageEnv)
	if meta == "" {
		t.Skipf("%s is not set: run make test-cloud", imageEnv)
	}
	if testing.Short() {
		t.Skip("boots a real distribution; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs in network and PID namespaces of its own")
	}
	data, err := os.ReadFile(meta)
	if err != nil {
		t.Fatalf("%s: %v", imageEnv, err)
	}
	im, err := spec.ParseImage(data)
	if err != nil {
		t.Fatalf("%s (%s): %v", imageEnv, meta, err)
	}
	if !filepath.IsAbs(im.Location) {
		im.Location = filepath.Join(filepath.Dir(meta), im.Location)
	}
	if abs, err := filepath.Abs(im.Location); err == nil {
		im.Location = abs
	}
	return im
}

// newLocal returns a Local over a fresh state directory. Cleanup kills
// every QEMU it started, removes its networks and the directory, whether
// the test passed or not.
func newLocal(t *testing.T) *vmfest.Local {
	t.Helper()
	home, err := os.MkdirTemp("", "vmfc") // short: Unix socket paths live under it
	if err != nil {
		t.Fatal(err)
	}
	l, err := vmfest.NewLocal(vmfest.Config{Home: home, Accel: os.Getenv("VMFEST_ACCEL"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		os.RemoveAll(home)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		testutil.KillMachines(home)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if nets, err := l.Networks(ctx); err == nil {
			for _, n := range nets {
				l.RemoveNetwork(ctx, n.Name)
			}
		}
		os.RemoveAll(home)
	})
	return l
}

// run runs cmd on m over vmfest's SSH as the image's user and returns its
// standard output, failing the test on a non-zero exit.
func run(ctx context.Context, t *testing.T, l *vmfest.Local, m vmfest.Machine, cmd ...string) string {
	t.Helper()
	signer, _, err := l.SSHKey()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code, err := vmfest.SSH(ctx, m, signer, vmfest.SSHOptions{Command: cmd, Stdout: &stdout, Stderr: &stderr, ConnectTimeout: 2 * time.Minute})
	if err != nil {
		t.Fatalf("ssh %s: %v", strings.Join(cmd, " "), err)
	}
	if code != 0 {
		t.Fatalf("ssh %s: exit status %d\nstdout: %s\nstderr: %s", strings.Join(cmd, " "), code, &stdout, &stderr)
	}
	return strings.TrimSpace(stdout.String())
}

// agentHostName asks the guest agent for the guest's host name, retrying
// until it equals want or ctx ends; it returns the last name read.
func agentHostName(ctx context.Context, home, name, want string) (string, error) {
	sock := filepath.Join(home, store.MachinesDir, name, store.QGASocket)
	var got string
	var last error
	for {
		got, last = func() (string, error) {
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			a, err := qemu.DialAgent(actx, sock)
			if err != nil {
				return "", err
			}
			defer a.Close()
			raw, err := a.Execute(actx, "guest-get-host-name", nil)
			if err != nil {
				return "", err
			}
			var r struct {
				HostName string `json:"host-name"`
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				return "", fmt.Errorf("guest-get-host-name: %w", err)
			}
			return r.HostName, nil
		}()
		if last == nil && got == want {
			return got, nil
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return got, last
		case <-time.After(time.Second):
		}
	}
}

// userData is the user's own #cloud-config: a file written and a command
// run, beside what vmfest seeds (host name, user, key, network).
const userData = `#cloud-config
write_files:
  - path: /etc/vmfest-cloud-test
    content: written by the user's cloud-config
runcmd:
  - [sh, -c, "id -un > /run/vmfest-runcmd"]
`

// diskSize is the machine's disk, twice the image's 2 GiB: cloud-init's
// growpart and resizefs grow the root file system to fill it.
const diskSize = 4 << 30

// TestCloudInit boots the cloud image once, on micro hardware (host-only
// NIC 0, NAT NIC 1) with a user-data and a disk larger than the image, and
// checks what cloud-init made of it, one subtest per promise: the host
// name, the image's user with vmfest's key, NIC 0 configured by DHCP with
// the address vmfest reserved, the user's user-data, the root file
// system grown to the disk, a volume formatted and written, and an ISO in
// the dvd drive read by its label. A second boot, of another machine,
// reads the volume back after the first machine is destroyed.
func TestCloudInit(t *testing.T) {
	image := cloudImage(t)
	if !netnstest.Enter(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute) // ~90 s alone; more on a busy host (the second boot has its own)
	defer cancel()
	l := newLocal(t)
	const name = "cloudy"

	hw, err := l.HardwareModel(ctx, "micro")
	if err != nil {
		t.Fatal(err)
	}
	hw.DiskSize = diskSize
	// A volume and an ISO, each in the first free slot that takes it: the
	// volume beside micro's boot disk on its virtio controller, the ISO in
	// the IDE dvd drive of slot 2 (which moves the seed to a drive of its
	// own).
	if _, err := l.CreateVolume(ctx, vmfest.VolumeSpec{Name: volumeName, Size: volumeSize}); err != nil {
		t.Fatal(err)
	}
	media := testutil.WriteISO(t, filepath.Join(t.TempDir(), "media.iso"), mediaLabel, map[string][]byte{mediaFile: mediaData})
	m, err := l.Instance(ctx, name, vmfest.ImageSpec(image), vmfest.HardwareSpec(hw), vmfest.WithUserData([]byte(userData)),
		vmfest.WithAttachment(vmfest.Attachment{Volume: volumeName}), vmfest.WithAttachment(vmfest.Attachment{ISO: media}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := m.ConsoleLog(context.Background())
			t.Logf("console:\n%s", b)
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		m.PowerDown(cctx)
		m.Destroy(cctx)
	})

	start := time.Now()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	ready := time.Since(start)
	if got := run(ctx, t, l, m, "cloud-init", "status", "--wait"); !strings.Contains(got, "status: done") {
		t.Fatalf("cloud-init status --wait = %q, want status: done", got)
	}
	t.Logf("boot: guest agent ready after %s, cloud-init done after %s (accel %s)",
		ready.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond), accel(ctx, m))

	t.Run("host name", func(t *testing.T) {
		if got := run(ctx, t, l, m, "hostname"); got != name {
			t.Errorf("hostname over ssh = %q, want the machine name %q", got, name)
		}
		hctx, hcancel := context.WithTimeout(ctx, 30*time.Second)
		defer hcancel()
		if got, err := agentHostName(hctx, l.Home(), name, name); err != nil || got != name {
			t.Errorf("guest-get-host-name = %q (%v), want the machine name %q", got, err, name)
		}
	})
	t.Run("user and key", func(t *testing.T) {
		if got := run(ctx, t, l, m, "id", "-un"); got != image.Username {
			t.Errorf("id -un = %q, want the image's user %q", got, image.Username)
		}
	})
	t.Run("network", func(t *testing.T) {
		info, err := m.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.Networks) == 0 || info.Networks[0].IP == "" {
			t.Fatalf("NIC 0 has no reserved host-only address: %+v", info.Networks)
		}
		// The agent may know the address a moment before dnsmasq
		// writes its lease: wait, with a deadline, for the lease.
		var addr vmfest.Address
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if addr, err = m.IP(ctx, 0); err != nil {
				t.Fatal(err)
			}
			if addr.Source == "lease" || time.Now().After(deadline) {
				break
			}
		}
		if addr.IP != info.Networks[0].IP || addr.Source != "lease" {
			t.Errorf("IP(0) = %+v, want the reserved address %s from the lease", addr, info.Networks[0].IP)
		}
		// The guest holds that address itself: cloud-init matched
		// network-config by MAC and networkd ran DHCP.
		if got := run(ctx, t, l, m, "ip", "-4", "-o", "addr", "show"); !strings.Contains(got, " "+addr.IP+"/") {
			t.Errorf("the guest's addresses lack %s:\n%s", addr.IP, got)
		}
	})
	t.Run("user-data", func(t *testing.T) {
		if got := run(ctx, t, l, m, "cat", "/etc/vmfest-cloud-test"); got != "written by the user's cloud-config" {
			t.Errorf("write_files: /etc/vmfest-cloud-test holds %q", got)
		}
		if got := run(ctx, t, l, m, "cat", "/run/vmfest-runcmd"); got != "root" {
			t.Errorf("runcmd: /run/vmfest-runcmd holds %q, want root", got)
		}
	})
	t.Run("growpart", func(t *testing.T) {
		// The root file system's disk, whatever its name among the
		// machine's disks.
		out := run(ctx, t, l, m, "sh", "-c", `lsblk -bdno SIZE "/dev/$(lsblk -no PKNAME "$(findmnt -nvo SOURCE /)")"; df -B1 --output=size / | tail -n 1`)
		f := strings.Fields(out)
		if len(f) != 2 {
			t.Fatalf("lsblk and df said %q", out)
		}
		var disk, root int64
		fmt.Sscan(f[0], &disk)
		fmt.Sscan(f[1], &root)
		if disk != diskSize {
			t.Errorf("the guest's disk is %d bytes, want %d", disk, int64(diskSize))
		}
		// The file system keeps some room for its own metadata; a root
		// left at the image's 2 GiB is well below this.
		if root < diskSize*9/10 {
			t.Errorf("the root file system is %d bytes on a %d-byte disk: not grown", root, disk)
		}
	})
	var volumeData []byte
	t.Run("volume", func(t *testing.T) {
		volumeData = writeVolume(ctx, t, m)
	})
	t.Run("dvd", func(t *testing.T) {
		// Mounted by its label, read-only (a CD-ROM drive takes no
		// writes), and read back whole.
		got := guestSh(ctx, t, m, nil, `
			dev=$(waitdev LABEL `+mediaLabel+`)
			mkdir -p /mnt/media
			mount -o ro "$dev" /mnt/media
			findmnt -no OPTIONS /mnt/media | tr , '\n' | grep -qx ro || { echo "mounted read-write" >&2; exit 1; }
			cat /mnt/media/`+mediaFile+`
			umount /mnt/media`)
		if !bytes.Equal(got, mediaData) {
			t.Errorf("the ISO's %s read %d bytes in the guest (sha256 %x), want its %d bytes (sha256 %x)", mediaFile, len(got), sha256.Sum256(got), len(mediaData), sha256.Sum256(mediaData))
		}
	})

	t.Run("memory clone", func(t *testing.T) {
		checkMemoryClone(ctx, t, l, m)
	})

	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if volumeData == nil {
		return // the volume subtest failed: nothing to carry over
	}
	t.Run("volume on a second machine", func(t *testing.T) {
		checkVolumeMoves(t, l, image, volumeData)
	})
}

// checkMemoryClone saves the booted machine m (its volume detached first: a
// machine with a volume cannot be cloned) and clones it from its memory:
// the clone's guest runs qemu-guest-agent, so vmfest re-identifies it with
// its script through guest-exec. The clone answers with its own host name,
// has its own MAC and its host-only reservation (leased by systemd-networkd,
// whose configuration cloud-init wrote for the source's MAC) and takes SSH
// as itself; the source then resumes as itself.
func checkMemoryClone(ctx context.Context, t *testing.T, l *vmfest.Local, m vmfest.Machine) {
	if _, err := m.Detach(ctx, vmfest.Attachment{Volume: volumeName}); err != nil {
		t.Fatal(err)
	}
	src, err := m.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Save(ctx); err != nil {
		t.Fatal(err)
	}
	const name = "cloudy-clone"
	begun := time.Now()
	c, err := m.Clone(ctx, name)
	if c != nil {
		t.Cleanup(func() {
			cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer ccancel()
			c.PowerDown(cctx)
			c.Destroy(cctx)
		})
	}
	if err != nil {
		if c != nil {
			if out, xerr := c.Exec(ctx, vmfest.ExecRequest{Command: []string{"/bin/sh", "-c", "ip addr; networkctl list; ls -l /etc/systemd/network /run/systemd/network; journalctl -b -u systemd-networkd --no-pager | tail -30"}}); xerr == nil {
				t.Logf("the clone's network:\n%s%s", out.Stdout, out.Stderr)
			}
		}
		t.Fatalf("clone: %v", err)
	}
	t.Logf("memory clone of the cloud image: running and re-identified after %s", time.Since(begun).Round(10*time.Millisecond))
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mac := strings.ToLower(info.HardwareSpec.Network[0].MACAddress)
	if mac == strings.ToLower(src.HardwareSpec.Network[0].MACAddress) {
		t.Fatalf("the clone has the source's MAC %s", mac)
	}
	hctx, hcancel := context.WithTimeout(ctx, 30*time.Second)
	defer hcancel()
	if got, err := agentHostName(hctx, l.Home(), name, name); err != nil || got != name {
		t.Errorf("the clone's guest-get-host-name = %q (%v), want %q", got, err, name)
	}
	if got := string(guestSh(ctx, t, c, nil, "cat /sys/class/net/*/address")); !strings.Contains(got, mac) {
		t.Errorf("no interface of the clone's guest has its MAC %s:\n%s", mac, got)
	}
	addr, err := c.IP(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if addr.IP != info.Networks[0].IP || addr.IP == src.Networks[0].IP {
		t.Errorf("the clone's IP(0) = %+v, want its reservation %s (the source's is %s)", addr, info.Networks[0].IP, src.Networks[0].IP)
	}
	if got := string(guestSh(ctx, t, c, nil, "ip -4 -o addr show")); !strings.Contains(got, " "+info.Networks[0].IP+"/") || strings.Contains(got, " "+src.Networks[0].IP+"/") {
		t.Errorf("the clone's addresses, want %s and not the source's %s:\n%s", info.Networks[0].IP, src.Networks[0].IP, got)
	}
	if got := run(ctx, t, l, c, "hostname"); got != name {
		t.Errorf("hostname over ssh to the clone = %q, want %q", got, name)
	}
	// The source resumes from its own saved state, as itself.
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got := run(ctx, t, l, m, "sh", "-c", "hostname; ip -4 -o addr show"); !strings.HasPrefix(got, src.Name+"\n") || !strings.Contains(got, " "+src.Networks[0].IP+"/") {
		t.Errorf("the source after its clone: %q", got)
	}
}

// The volume attached to the cloud-init suite's machine: formatted and
// written there, read back from a second machine after the first is
// destroyed. Its size, unlike the other disks', finds it in the guest.
const (
	volumeName = "data"
	volumeSize = 1 << 30
	volumeFile = "payload"
)

// The ISO put in the machine's dvd drive.
const (
	mediaLabel = "VMFEST_MEDIA"
	mediaFile  = "readme"
)

var mediaData = bytes.Repeat([]byte("read from vmfest's ISO in a dvd slot\n"), 4096)

// guestShell is prepended to every guestSh script: root's PATH, and
// waitdev KEY VALUE, which prints the one block device whose KEY (SIZE in
// bytes, LABEL) is VALUE, waiting up to 60 s for udev and the kernel.
const guestShell = `set -eu
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
waitdev() {
	for i in $(seq 60); do
		case $1 in
		SIZE) d=$(lsblk -bdpno NAME,SIZE,TYPE | awk -v s="$2" '$2 == s && $3 == "disk" { print $1 }') ;;
		LABEL) d=$(blkid -L "$2" || true) ;;
		esac
		if [ -n "$d" ]; then
			[ "$(echo "$d" | wc -l)" -eq 1 ] || { echo "more than one device has $1 $2: $d" >&2; return 1; }
			echo "$d"
			return 0
		fi
		sleep 1
	done
	echo "no block device with $1 $2:" >&2
	lsblk -bpo NAME,SIZE,TYPE,LABEL >&2
	return 1
}
`

// guestSh runs script with sh as root in the guest through the guest agent
// (Machine.Exec) and returns its standard output, failing the test on a
// non-zero exit.
func guestSh(ctx context.Context, t *testing.T, m vmfest.Machine, stdin []byte, script string) []byte {
	t.Helper()
	ectx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res, err := m.Exec(ectx, vmfest.ExecRequest{Command: []string{"/bin/sh", "-c", guestShell + script}, Stdin: stdin})
	if err != nil {
		t.Fatalf("exec %s: %v", script, err)
	}
	if res.ExitCode != 0 || res.StdoutTruncated {
		t.Fatalf("exec %s: exit status %d (stdout truncated: %v)\nstderr: %s", script, res.ExitCode, res.StdoutTruncated, res.Stderr)
	}
	return res.Stdout
}

// writeVolume formats the volume attached to m (found by its size) with
// ext4, writes a MiB of random bytes into a file on it, unmounts it and
// returns the bytes.
func writeVolume(ctx context.Context, t *testing.T, m vmfest.Machine) []byte {
	t.Helper()
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	guestSh(ctx, t, m, data, fmt.Sprintf(`
		dev=$(waitdev SIZE %d)
		mkfs.ext4 -q -F -L vmfestdata "$dev"
		mkdir -p /mnt/data
		mount "$dev" /mnt/data
		cat > /mnt/data/%s
		umount /mnt/data
		sync`, volumeSize, volumeFile))
	return data
}

// checkVolumeMoves attaches the volume to a second machine (the first is
// destroyed), boots it and reads the file back byte for byte.
func checkVolumeMoves(t *testing.T, l *vmfest.Local, image spec.Image, want []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	if v, err := l.Volume(ctx, volumeName); err != nil || v.Machine != "" {
		t.Fatalf("after its machine was destroyed, the volume reads %+v, %v: want it kept, attached to nothing", v, err)
	}
	m, err := l.Instance(ctx, "second", vmfest.ImageSpec(image), vmfest.HardwareModel("micro"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := m.ConsoleLog(context.Background())
			t.Logf("console of the second machine:\n%s", b)
		}
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		m.PowerDown(cctx)
		m.Destroy(cctx)
	})
	at, err := m.Attach(ctx, vmfest.Attachment{Volume: volumeName})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	t.Logf("second boot: guest agent ready after %s; the volume is in slot %s", time.Since(start).Round(100*time.Millisecond), at)
	got := guestSh(ctx, t, m, nil, fmt.Sprintf(`
		dev=$(waitdev SIZE %d)
		[ "$(blkid -o value -s LABEL "$dev")" = vmfestdata ] || { echo "$dev holds no file system labelled vmfestdata" >&2; exit 1; }
		mkdir -p /mnt/data
		mount -o ro "$dev" /mnt/data
		cat /mnt/data/%s
		umount /mnt/data`, volumeSize, volumeFile))
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes back from the volume (sha256 %x), want the %d written by the first machine (sha256 %x)", len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
	if err := m.PowerDown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveVolume(ctx, volumeName); err != nil {
		t.Errorf("remove the volume once free: %v", err)
	}
}

func accel(ctx context.Context, m vmfest.Machine) string {
	info, err := m.Info(ctx)
	if err != nil {
		return "?"
	}
	return info.Accel
}
