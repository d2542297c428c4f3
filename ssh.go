package vmfest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// The vmfest-managed SSH key pair, in $VMFEST_HOME/ssh/.
const (
	SSHDir        = "ssh"
	SSHPrivateKey = "id_ed25519"
	SSHPublicKey  = "id_ed25519.pub"
)

// SSHKey returns vmfest's own ed25519 key pair ($VMFEST_HOME/ssh/), made on
// first use: the signer and the public key in authorized_keys form. Safe
// for concurrent use across processes (the first one makes it).
func (l *Local) SSHKey() (ssh.Signer, string, error) {
	return LoadSSHKey(l.home.Root())
}

// LoadSSHKey returns the key pair of the state directory home, making it
// on first use.
func LoadSSHKey(home string) (ssh.Signer, string, error) {
	dir := filepath.Join(home, SSHDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("ssh key: %w", err)
	}
	priv := filepath.Join(dir, SSHPrivateKey)
	if _, err := os.Stat(priv); errors.Is(err, fs.ErrNotExist) {
		lk, err := store.LockDir(context.Background(), dir)
		if err != nil {
			return nil, "", fmt.Errorf("ssh key: %w", err)
		}
		defer lk.Unlock()
		if _, err := os.Stat(priv); errors.Is(err, fs.ErrNotExist) {
			if err := makeSSHKey(dir); err != nil {
				return nil, "", err
			}
		}
	}
	data, err := os.ReadFile(priv)
	if err != nil {
		return nil, "", fmt.Errorf("ssh key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, "", fmt.Errorf("ssh key %s: %w", priv, err)
	}
	pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " vmfest"
	return signer, pub, nil
}

func makeSSHKey(dir string) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("ssh key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "vmfest")
	if err != nil {
		return fmt.Errorf("ssh key: %w", err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return fmt.Errorf("ssh key: %w", err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " vmfest\n"
	if err := store.WriteFileAtomic(filepath.Join(dir, SSHPublicKey), []byte(line), 0o644); err != nil {
		return fmt.Errorf("ssh key: %w", err)
	}
	if err := store.WriteFileAtomic(filepath.Join(dir, SSHPrivateKey), pem.EncodeToMemory(block), 0o600); err != nil {
		return fmt.Errorf("ssh key: %w", err)
	}
	return nil
}

// SSHOptions tunes SSH.
type SSHOptions struct {
	// Command runs through the guest's shell; empty: an interactive shell.
	Command []string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	// TTY asks for a pseudo-terminal of Width x Height (an interactive
	// session).
	TTY           bool
	Width, Height int
	// User overrides the image's username (default root).
	User string
	// ConnectTimeout bounds finding the machine's address and connecting
	// (retried while the guest's SSH server does not answer yet); 0: ctx
	// alone bounds it. ctx bounds the whole session.
	ConnectTimeout time.Duration
}

// SSHEndpoint returns where to reach a running machine's SSH server: its
// NAT NIC's loopback forward when it has one, else the address of its
// first host-only (then bridged, then internal) NIC, port 22, waiting for
// that address within ctx.
func SSHEndpoint(ctx context.Context, m Machine) (string, error) {
	info, err := m.Info(ctx)
	if err != nil {
		return "", err
	}
	for _, n := range info.Networks {
		if n.SSH != "" {
			return n.SSH, nil
		}
	}
	for _, kind := range []string{spec.AttachHostOnly, spec.AttachBridged, spec.AttachInternal} {
		for _, n := range info.Networks {
			if n.Attachment != kind {
				continue
			}
			a, err := m.IP(ctx, n.Slot)
			if err != nil {
				return "", err
			}
			return net.JoinHostPort(a.IP, "22"), nil
		}
	}
	return "", fmt.Errorf("%w: machine %s has no NIC to reach it by (no nat, host-only, bridged or internal NIC, or it is not running)", ErrInvalid, m.Name())
}

// SSHDialer is implemented by machines whose SSH server is reached other
// than by connecting to SSHEndpoint from this process: a Remote server's
// machines tunnel through the server's API, so that the client needs to
// reach only the server. SSH uses it when a machine has it.
type SSHDialer interface {
	// DialSSH connects to the machine's SSH server; ctx bounds the dial,
	// not the connection. The machine's own refusals come back as the
	// vmfest errors they are (ErrNotFound, a *StateError, ErrInvalid), so
	// a caller tells them from a guest that does not answer yet.
	DialSSH(ctx context.Context) (net.Conn, error)
}

// sshDialer returns how to connect to machine m's SSH server, and where
// that goes (for messages): through its server's API when m is an
// SSHDialer, else to SSHEndpoint.
func sshDialer(ctx context.Context, m Machine) (dial func(context.Context) (net.Conn, error), addr string, err error) {
	if d, ok := m.(SSHDialer); ok {
		addr = "its server"
		if v, ok := m.(interface{ sshVia() string }); ok {
			addr = v.sshVia()
		}
		return d.DialSSH, addr, nil
	}
	ep, err := SSHEndpoint(ctx, m)
	if err != nil {
		return nil, "", err
	}
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ep)
	}, "at " + ep, nil
}

// DialSSH connects to machine m's SSH server as SSH does (through its
// server's API, or to SSHEndpoint), retrying until the guest's SSH server
// answers or ctx ends; a machine that cannot be reached at all (not found,
// not running, no NIC) fails at once. For an SSH client of the caller's
// own (vmfest ssh-proxy).
func DialSSH(ctx context.Context, m Machine) (net.Conn, error) {
	dial, addr, err := sshDialer(ctx, m)
	if err != nil {
		return nil, err
	}
	for {
		c, err := dial(ctx)
		if err == nil {
			return c, nil
		}
		if unreachable(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("ssh to machine %s %s: %w: %w", m.Name(), addr, ErrTimeout, err)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// SSH runs opts.Command (or a shell) on machine m as its image's user
// (root when the image names none), authenticated with signer (and the
// image's password, if it has one), and returns the remote exit status.
// It connects through m's SSHDialer when m has one (a Remote's machine:
// through its server's API), else to SSHEndpoint. It retries the
// connection until the guest's SSH server answers, or
// opts.ConnectTimeout or ctx ends; a guest that refuses the key, or a
// machine that cannot be reached at all (not found, not running, no NIC),
// fails at once. When ctx ends during the session, the remote command is
// sent SIGINT (SIGTERM on a deadline) and given 2 s to end. Host keys are
// not checked: the endpoint is a loopback forward or a host-only address
// that only the machine's host reaches, directly or through its API.
func SSH(ctx context.Context, m Machine, signer ssh.Signer, opts SSHOptions) (int, error) {
	cctx := ctx
	if opts.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, opts.ConnectTimeout)
		defer cancel()
	}
	info, err := m.Info(cctx)
	if err != nil {
		return -1, err
	}
	dial, addr, err := sshDialer(cctx, m)
	if err != nil {
		return -1, err
	}
	user := opts.User
	if user == "" {
		user = info.ImageSpec.Username
	}
	if user == "" {
		user = "root"
	}
	auth := []ssh.AuthMethod{ssh.PublicKeys(signer)}
	if info.ImageSpec.Password != "" {
		auth = append(auth, ssh.Password(info.ImageSpec.Password))
	}
	cfg := &ssh.ClientConfig{User: user, Auth: auth, HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second}
	var client *ssh.Client
	var last error
	refused := 0
	for {
		client, last = dialSSH(cctx, dial, cfg)
		if last == nil {
			break
		}
		if unreachable(last) {
			return -1, last
		}
		// x/crypto has no typed client-side error for a refused key. A
		// second try a moment later covers a guest whose sshd answers
		// before cloud-init has written the key.
		if strings.Contains(last.Error(), "ssh: unable to authenticate") {
			if refused++; refused > 1 {
				tried := "vmfest's key"
				if _, ok := m.(SSHDialer); ok {
					tried = "this client's vmfest key, which a machine created through the server by someone else has only if its creator gave it with --ssh-key"
				}
				if info.ImageSpec.Password != "" {
					tried += ", and the image's password"
				}
				return -1, fmt.Errorf("ssh to machine %s %s as %s: the guest refused the login (tried %s): %w", m.Name(), addr, user, tried, last)
			}
		}
		select {
		case <-cctx.Done():
			return -1, fmt.Errorf("ssh to machine %s %s: %w: %w", m.Name(), addr, ErrTimeout, last)
		case <-time.After(time.Duration(300*(1+2*refused)) * time.Millisecond):
		}
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return -1, fmt.Errorf("ssh to machine %s: %w", m.Name(), err)
	}
	defer sess.Close()
	sess.Stdin, sess.Stdout, sess.Stderr = opts.Stdin, opts.Stdout, opts.Stderr
	if opts.TTY {
		w, h := opts.Width, opts.Height
		if w <= 0 || h <= 0 {
			w, h = 80, 24
		}
		if err := sess.RequestPty(termName(), h, w, ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
			return -1, fmt.Errorf("ssh to machine %s: pseudo-terminal: %w", m.Name(), err)
		}
	}
	done := make(chan error, 1)
	go func() {
		if len(opts.Command) == 0 {
			if err := sess.Shell(); err != nil {
				done <- err
				return
			}
			done <- sess.Wait()
			return
		}
		done <- sess.Run(shellJoin(opts.Command))
	}()
	select {
	case <-ctx.Done():
		sig := ssh.SIGINT
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			sig = ssh.SIGTERM
		}
		sess.Signal(sig)
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		}
		client.Close()
		return -1, fmt.Errorf("ssh to machine %s: %w", m.Name(), ctx.Err())
	case err = <-done:
	}
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee):
		return ee.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return -1, fmt.Errorf("ssh to machine %s: the connection closed without an exit status", m.Name())
	}
	return -1, fmt.Errorf("ssh to machine %s: %w", m.Name(), err)
}

// dialSSH connects with dial and runs the SSH handshake, both bounded by
// ctx and 10 s: when that ends first, the connection is closed under the
// handshake.
func dialSSH(ctx context.Context, dial func(context.Context) (net.Conn, error), cfg *ssh.ClientConfig) (*ssh.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := dial(dctx)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	c, chans, reqs, err := ssh.NewClientConn(conn, conn.RemoteAddr().String(), cfg)
	if !stop() {
		// dctx ended during the handshake and closed conn under it.
		if err == nil {
			c.Close()
		}
		return nil, fmt.Errorf("ssh handshake: %w", context.Cause(dctx))
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// unreachable reports an error of the machine itself, which no retry
// mends: not found, not running, no NIC to reach it by, not allowed.
func unreachable(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrWrongState) || errors.Is(err, ErrInvalid) ||
		errors.Is(err, fs.ErrPermission) || errors.Is(err, errors.ErrUnsupported)
}

func termName() string {
	if t := os.Getenv("TERM"); t != "" {
		return t
	}
	return "xterm"
}

// shellJoin quotes args for a POSIX shell; a single argument is passed
// as is (it may be a whole command line).
func shellJoin(args []string) string {
	if len(args) == 1 {
		return args[0]
	}
	var b bytes.Buffer
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r == '-' || r == '_' || r == '.' || r == '/' || r == '=' || r == ':' || r == ',' || r == '@' ||
				r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
		}) < 0 {
			b.WriteString(a)
			continue
		}
		b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
	}
	return b.String()
}
