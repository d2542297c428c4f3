package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// The box: every qemu-img run on an untrusted image (info, measure,
// convert, check) runs under bubblewrap in new mount, PID, IPC, UTS,
// network (and, where the kernel has it, cgroup) namespaces that show
// only /usr (read-only, with the /bin, /lib and /lib64 links) and one
// directory of the staging area, as an unprivileged uid and gid. No /etc,
// /home, /root, /proc, /sys or /tmp of the host exists in it: whatever
// file an image names, qemu-img cannot open it, because it is not there.

// ErrNoBox: bubblewrap, which confines qemu-img, is missing or broken.
var ErrNoBox = errors.New("cannot confine qemu-img")

// Paths inside the box.
const (
	boxMount = "/box"
	// boxDirName is the box's directory inside a staging directory.
	boxDirName = "box"
)

// Default unprivileged identity of boxed qemu-img (nobody:nogroup).
const (
	DefaultBoxUID = 65534
	DefaultBoxGID = 65534
)

// box runs qemu-img confined to one host directory, shown inside as
// /box. It is a value; each run is its own sandbox.
type box struct {
	bwrap   string // host path of bwrap
	qemuImg string // path of qemu-img, under /usr (the same inside and out)
	setpriv string // path of setpriv, under /usr, when started as root
	dir     string // host directory shown as /box
	uid     int
	gid     int
}

// newBox checks that the box can be built: bwrap found, qemu-img under
// /usr (the only tree the box shows), and, as root, setpriv to drop to
// the unprivileged uid inside it. It fails closed.
func newBox(cfg Config, dir string) (box, error) {
	b := box{dir: dir, uid: cfg.BoxUID, gid: cfg.BoxGID}
	bw := cfg.Bwrap
	if bw == "" {
		bw = "bwrap"
	}
	p, err := exec.LookPath(bw)
	if err != nil {
		return box{}, fmt.Errorf("%w: bubblewrap (%s) is not installed: install the bubblewrap package (scripts/install-deps.sh) or set the bwrap path; vmfest opens untrusted images only in its box", ErrNoBox, bw)
	}
	b.bwrap = p
	if b.qemuImg, err = underUsr(cfg.QEMUImg); err != nil {
		return box{}, err
	}
	if os.Geteuid() == 0 {
		if b.setpriv, err = underUsr("setpriv"); err != nil {
			return box{}, fmt.Errorf("%w (setpriv, from util-linux, drops to the box's unprivileged uid)", err)
		}
	}
	return b, nil
}

// underUsr resolves a program and requires it (after symbolic links) to
// be under /usr, so that it runs inside the box from the same path.
func underUsr(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrNoBox, name, err)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrNoBox, name, err)
	}
	if real, err = filepath.Abs(real); err != nil || !strings.HasPrefix(real, "/usr/") {
		return "", fmt.Errorf("%w: %s is %s: the box shows only /usr, so it must be installed there", ErrNoBox, name, real)
	}
	return real, nil
}

// prepareDir makes the box's directory writable for its uid and for no
// one else: 0700, owned by the box's uid when vmfest runs as root (then
// the staging directory above it, 0700 and root's, keeps other local
// users out).
func (b box) prepareDir() error {
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(b.dir, b.uid, b.gid); err != nil {
			return fmt.Errorf("staging: %w", err)
		}
	}
	return os.Chmod(b.dir, 0o700)
}

// give hands a file in the box's directory to the box's uid (a no-op
// unless root).
func (b box) give(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	if err := os.Lchown(path, b.uid, b.gid); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	return nil
}

// take gives a file the box made back to the user vmfest runs as.
func (b box) take(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	if err := os.Lchown(path, 0, 0); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	return nil
}

// inside names a file of the box's directory as the box sees it.
func (b box) inside(name string) string { return boxMount + "/" + name }

// command is qemu-img with args, run in the box. Cancelling ctx kills
// bwrap, and --die-with-parent takes qemu-img with it.
func (b box) command(ctx context.Context, args ...string) *exec.Cmd {
	argv := []string{
		"--ro-bind", "/usr", "/usr",
		"--symlink", "usr/bin", "/bin",
		"--symlink", "usr/lib", "/lib",
		"--symlink", "usr/lib64", "/lib64",
		"--dev", "/dev",
		"--bind", b.dir, boxMount,
		"--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		"--die-with-parent", "--new-session", "--clearenv",
	}
	if b.setpriv != "" {
		// As root: keep only what setpriv needs to become the box's uid;
		// it then drops every capability and forbids gaining any.
		argv = append(argv, "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
			b.setpriv, "--reuid", fmt.Sprint(b.uid), "--regid", fmt.Sprint(b.gid), "--clear-groups", "--no-new-privs", "--")
	} else {
		// Already unprivileged: a user namespace maps us to ourselves.
		argv = append(argv, "--unshare-user", "--")
	}
	argv = append(argv, b.qemuImg)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, b.bwrap, argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Env = []string{}
	return cmd
}

func isNoBox(err error) bool { return errors.Is(err, ErrNoBox) }
