package libvirt

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The tests that need libvirtd run it themselves, never the host's: the
// test binary re-runs itself under `unshare --mount --net --pid --fork`
// (stage init, PID 1 of the new PID namespace, which mounts private tmpfs
// over libvirt's directories and reaps orphans such as the QEMU processes
// libvirtd daemonises), which runs it once more (stage tests) to start
// virtlogd and libvirtd, run the tests and stop the daemons. When the
// binary ends, the kernel ends whatever is left in the namespaces, and
// their mounts and links go with them.
const stageEnv = "VMFEST_LIBVIRT_TEST_STAGE"

// libvirtdSkip, when set, is why the tests that need libvirtd skip.
var libvirtdSkip string

// daemonLogs is where the test's libvirtd and virtlogd log (inside the
// namespace's private /var/log/libvirt).
const daemonLogs = "/var/log/libvirt"

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	switch os.Getenv(stageEnv) {
	case "init":
		return initStage()
	case "tests":
		stop, err := startDaemons()
		if err != nil {
			fmt.Fprintln(os.Stderr, "libvirt test:", err)
			return 1
		}
		code := m.Run()
		if err := stop(); err != nil {
			fmt.Fprintln(os.Stderr, "libvirt test: stop the daemons:", err)
			if code == 0 {
				code = 1
			}
		}
		return code
	}
	libvirtdSkip = hostReady()
	if libvirtdSkip != "" {
		return m.Run()
	}
	unshare, _ := exec.LookPath("unshare")
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "libvirt test:", err)
		return 1
	}
	cmd := exec.Command(unshare, append([]string{"--mount", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "--", self}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), stageEnv+"=init")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode()
	}
	fmt.Fprintln(os.Stderr, "libvirt test: run in namespaces of its own:", err)
	return 1
}

// hostReady says why libvirtd cannot be started for the tests, or "".
func hostReady() string {
	switch {
	case testing.Short():
		return "boots a real guest under libvirtd; skipped with -short"
	case os.Geteuid() != 0:
		return "needs root: starts a libvirtd of its own in mount, network and PID namespaces (unshare)"
	}
	for _, bin := range []string{"libvirtd", "virtlogd", "unshare", "qemu-system-x86_64", "qemu-img"} {
		if _, err := lookPath(bin); err != nil {
			return fmt.Sprintf("%s is not installed (make deps: scripts/install-deps.sh installs libvirt-daemon, libvirt-daemon-driver-qemu and libvirt-clients)", bin)
		}
	}
	return ""
}

// lookPath finds a binary on PATH or in the sbin directories root's PATH
// has but a test's may not.
func lookPath(bin string) (string, error) {
	if p, err := exec.LookPath(bin); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, bin)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", bin)
}

// libvirtDirs get a private tmpfs each. /run is one as a whole (the test
// needs nothing of the host's), which covers /var/run (a link to it).
var libvirtDirs = []string{"/run", "/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt"}

// The test's libvirt configuration. QEMU's default user is the packaged
// libvirt-qemu (made below when the host lacks it), so the test shows the
// domain's DAC label, not a root default, is what lets QEMU open the
// root-only files. No cgroups (libvirtd would make them in the host's
// cgroup tree) and no private /dev per QEMU.
const (
	libvirtdConf = `auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:` + daemonLogs + `/libvirtd.log"
`
	qemuConf = `cgroup_controllers = [ ]
namespaces = [ ]
`
	virtlogdConf = `log_outputs = "3:file:` + daemonLogs + `/virtlogd.log"
`
)

// initStage is PID 1 of the test's PID namespace: it makes the private
// mounts, brings lo up, runs the tests as its child and reaps every
// process that ends in the namespace until that child exits.
func initStage() int {
	if err := privateLibvirt(); err != nil {
		fmt.Fprintln(os.Stderr, "libvirt test:", err)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "libvirt test:", err)
		return 1
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), stageEnv+"=tests")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "libvirt test:", err)
		return 1
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "libvirt test: wait:", err)
			return 1
		}
		if pid != cmd.Process.Pid {
			continue // an orphan (QEMU, a daemon's child) reaped
		}
		if ws.Signaled() {
			fmt.Fprintln(os.Stderr, "libvirt test: tests ended by", ws.Signal())
			return 1
		}
		return ws.ExitStatus()
	}
}

// privateLibvirt mounts the namespace's own libvirt directories and
// configuration. A directory missing on the host is made (empty) as the
// mount point; nothing is written to the host's.
func privateLibvirt() error {
	// unshare --mount made every mount private already; be explicit.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	for _, dir := range libvirtDirs {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
		if dir == "/run" {
			flags = unix.MS_NOSUID // holds the test's /dev/kvm node
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", flags, "mode=0755"); err != nil {
			return fmt.Errorf("mount a tmpfs on %s: %w", dir, err)
		}
	}
	for name, body := range map[string]string{"libvirtd.conf": libvirtdConf, "qemu.conf": qemuConf, "virtlogd.conf": virtlogdConf} {
		if err := os.WriteFile(filepath.Join("/etc/libvirt", name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	// Debian's libvirtd needs its QEMU user to exist
	// (libvirt-daemon-system makes it): give the namespace its own
	// passwd and group with it.
	for _, f := range []struct{ path, line string }{
		{"/etc/passwd", "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"},
		{"/etc/group", "libvirt-qemu:x:64055:\n"},
	} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			return err
		}
		if strings.Contains("\n"+string(b), "\nlibvirt-qemu:") {
			continue
		}
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\n')
		}
		own := filepath.Join("/run", filepath.Base(f.path))
		if err := os.WriteFile(own, append(b, f.line...), 0o644); err != nil {
			return err
		}
		if err := unix.Mount(own, f.path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount the test's %s: %w", f.path, err)
		}
	}
	if err := kvmForQEMUUser(); err != nil {
		return err
	}
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("bring lo up in the test's network namespace: %w", err)
	}
	return nil
}

// kvmForQEMUUser gives the namespace a /dev/kvm that libvirt's QEMU user
// may open, as Debian's udev rule does on a real host (0660 root:kvm,
// libvirt-qemu in group kvm). Where only root may open the host's /dev/kvm
// (as on this project's machines), libvirt 9.0 decides at every define
// and start that KVM is "no longer usable" for the QEMU user, throws its
// cached QEMU capabilities away and probes QEMU again: 10 s each time.
func kvmForQEMUUser() error {
	var st unix.Stat_t
	if err := unix.Stat("/dev/kvm", &st); err != nil || st.Mode&0o006 == 0o006 {
		return nil // no KVM device, or open to all
	}
	node := "/run/kvm"
	if err := unix.Mknod(node, unix.S_IFCHR|0o660, int(st.Rdev)); err != nil {
		return fmt.Errorf("make the test's /dev/kvm: %w", err)
	}
	if err := os.Chown(node, 0, 64055); err != nil {
		return err
	}
	if err := os.Chmod(node, 0o660); err != nil { // mknod applied the umask
		return err
	}
	if err := unix.Mount(node, "/dev/kvm", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount the test's /dev/kvm: %w", err)
	}
	return nil
}

// startDaemons starts virtlogd and libvirtd in the foreground and waits
// until libvirtd answers; stop ends both (SIGTERM, then SIGKILL after 10 s).
func startDaemons() (stop func() error, err error) {
	var cmds []*exec.Cmd
	stop = func() error {
		var errs []error
		for i := len(cmds) - 1; i >= 0; i-- {
			c := cmds[i]
			c.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- c.Wait() }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				c.Process.Kill()
				<-done
				errs = append(errs, fmt.Errorf("%s did not stop on SIGTERM within 10 s", c.Path))
			}
		}
		return errors.Join(errs...)
	}
	for _, bin := range []string{"virtlogd", "libvirtd"} {
		path, err := lookPath(bin)
		if err != nil {
			stop()
			return nil, err
		}
		c := exec.Command(path)
		out, err := os.Create(filepath.Join(daemonLogs, bin+".out"))
		if err != nil {
			stop()
			return nil, err
		}
		c.Stdout, c.Stderr = out, out
		if err := c.Start(); err != nil {
			out.Close()
			stop()
			return nil, fmt.Errorf("start %s: %w", bin, err)
		}
		out.Close()
		cmds = append(cmds, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		c, err := dial(ctx, endpoint{socket: DefaultSocket, name: "qemu:///system"})
		if err == nil {
			_, err = c.ConnectGetLibVersion()
			c.close()
			if err == nil {
				return stop, nil
			}
		}
		select {
		case <-ctx.Done():
			stop()
			log, _ := os.ReadFile(filepath.Join(daemonLogs, "libvirtd.out"))
			return nil, fmt.Errorf("libvirtd did not answer within 60 s: %v\n%s", err, log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// needLibvirtd skips a test that needs the test's libvirtd when there is
// none.
func needLibvirtd(t *testing.T) {
	t.Helper()
	if libvirtdSkip != "" {
		t.Skip(libvirtdSkip)
	}
	if os.Getenv(stageEnv) != "tests" {
		t.Skip("runs only inside the test's namespaces")
	}
}
