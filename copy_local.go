package vmfest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/vmfest/vmfest/driver"
)

// guestCopier moves tar streams in and out of one running guest.
type guestCopier interface {
	// via names the transport, for messages.
	via() string
	// test reports whether p is a directory (kind 'd') or exists, as
	// anything (kind 'e'), in the guest.
	test(ctx context.Context, kind byte, p string) (bool, error)
	// unpack makes directory dir in the guest (with its parents) and
	// unpacks the tar stream r into it.
	unpack(ctx context.Context, dir string, r io.Reader) error
	// pack returns a tar stream of the guest's parent/base, whose entries
	// are base and below it; a base that does not exist wraps ErrNotFound.
	pack(ctx context.Context, parent, base string) (io.ReadCloser, error)
	// close releases the transport.
	close() error
}

// checkGuestPath checks a guest path given to CopyIn or CopyOut.
func checkGuestPath(op, p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("%w: %s path %q: give an absolute path in the guest", ErrInvalid, op, p)
	}
	if clean := path.Clean(p); clean != "/" {
		return clean, nil
	}
	return "", fmt.Errorf("%w: %s path %q: name a file or a directory under /", ErrInvalid, op, p)
}

// CopyIn implements Machine: the tar's top entry lands inside dst when dst
// is a directory in the guest, else it becomes dst.
func (m *localMachine) CopyIn(ctx context.Context, dst string, r io.Reader, opts CopyOptions) error {
	clean, err := checkGuestPath("copy to", dst)
	if err != nil {
		return err
	}
	if err := checkVia(opts.Via); err != nil {
		return err
	}
	// The stream's first entry names its top; read it before the guest is
	// touched, so a stream that is not a tar changes nothing there.
	tr := tar.NewReader(r)
	first, err := tr.Next()
	if err != nil {
		return fmt.Errorf("%w: copy to machine %s: the stream is not a tar archive: %w", ErrInvalid, m.name, err)
	}
	top, err := tarTop(first.Name)
	if err != nil {
		return err
	}
	c, inside, err := m.copier(ctx, opts.Via, "copy to", 'd', clean)
	if err != nil {
		return err
	}
	defer c.close()
	dir, name := clean, top
	if !inside {
		dir, name = path.Dir(clean), path.Base(clean)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(renameTar(pw, tr, first, top, name)) }()
	err = c.unpack(ctx, dir, pr)
	pr.CloseWithError(errors.New("the guest's tar ended"))
	if err != nil {
		return fmt.Errorf("copy to machine %s:%s (via %s): %w", m.name, dst, c.via(), err)
	}
	return nil
}

// CopyOut implements Machine: a tar stream whose entries are src's base
// name and below it. The stream is read from the guest as the caller reads
// it; a failure on the way is the error of a Read; Close releases the
// transport and the guest's temporary file.
func (m *localMachine) CopyOut(ctx context.Context, src string, opts CopyOptions) (io.ReadCloser, error) {
	clean, err := checkGuestPath("copy from", src)
	if err != nil {
		return nil, err
	}
	if err := checkVia(opts.Via); err != nil {
		return nil, err
	}
	c, exists, err := m.copier(ctx, opts.Via, "copy from", 'e', clean)
	if err != nil {
		return nil, err
	}
	if !exists {
		c.close()
		return nil, fmt.Errorf("%w: copy from machine %s:%s: no such file or directory in the guest", ErrNotFound, m.name, src)
	}
	rc, err := c.pack(ctx, path.Dir(clean), path.Base(clean))
	if err != nil {
		c.close()
		return nil, fmt.Errorf("copy from machine %s:%s (via %s): %w", m.name, src, c.via(), err)
	}
	return &closeBoth{ReadCloser: rc, also: c.close}, nil
}

// closeBoth closes its stream, then its transport.
type closeBoth struct {
	io.ReadCloser
	also func() error
}

func (c *closeBoth) Close() error { return errors.Join(c.ReadCloser.Close(), c.also()) }

// copier checks that the machine runs, picks the transport and answers
// its test (kind, p) through it; CopyViaAuto's probe of SSH is that test.
func (m *localMachine) copier(ctx context.Context, via, op string, kind byte, p string) (guestCopier, bool, error) {
	r, err := m.l.readRecord(m.name)
	if err != nil {
		return nil, false, err
	}
	st, err := m.status(ctx, r)
	if err != nil {
		return nil, false, err
	}
	if err := m.need(op, st.State, Running); err != nil {
		return nil, false, err
	}
	if via != CopyViaAgent {
		signer, _, err := m.l.SSHKey()
		if err != nil {
			return nil, false, err
		}
		c := &sshCopier{m: m, signer: signer}
		if via == CopyViaAuto {
			c.connect = CopySSHProbe
		}
		ok, err := c.test(ctx, kind, p)
		c.connect = 0
		switch {
		case err == nil:
			return c, ok, nil
		case via == CopyViaSSH:
			return nil, false, fmt.Errorf("%s machine %s via ssh: %w", op, m.name, err)
		}
		m.l.log.Debug("copy: ssh does not answer, using the guest agent", "machine", m.name, "err", err)
	}
	d, err := m.drv(r)
	if err != nil {
		return nil, false, err
	}
	if info := d.Info(); !info.Features.GuestAgent {
		return nil, false, fmt.Errorf("%w: %s machine %s: its SSH server does not answer and the %s driver has no guest agent", ErrUnsupported, op, m.name, info.Name)
	}
	a, err := d.Agent(ctx, m.ref(r))
	if err != nil {
		return nil, false, fmt.Errorf("%s machine %s: the guest agent did not answer: %w", op, m.name, err)
	}
	c := &agentCopier{a: a, log: m.l.log}
	ok, err := c.test(ctx, kind, p)
	if err != nil {
		a.Close()
		return nil, false, fmt.Errorf("%s machine %s (via agent): %w", op, m.name, err)
	}
	return c, ok, nil
}

// tarTop returns the top name of a copy's first tar entry: one path
// element, not "." or "..".
func tarTop(name string) (string, error) {
	top := strings.TrimSuffix(strings.TrimPrefix(name, "./"), "/")
	if top == "" || top == "." || top == ".." || strings.Contains(top, "/") {
		return "", fmt.Errorf("%w: copy: the archive's first entry %q is not one top file or directory", ErrInvalid, name)
	}
	return top, nil
}

// renameTar writes the archive whose first header is first and whose rest
// tr yields, with its top entry renamed from top to name. Every entry must
// be top or below it, without "..", and a directory, a regular file or a
// symbolic link; anything else is refused.
func renameTar(w io.Writer, tr *tar.Reader, first *tar.Header, top, name string) error {
	tw := tar.NewWriter(w)
	for hdr := first; ; {
		rest, ok := strings.CutPrefix(strings.TrimPrefix(hdr.Name, "./"), top)
		rel := strings.Trim(rest, "/")
		if !ok || (rest != "" && rest[0] != '/') || path.Clean("/"+rel) != "/"+rel && rel != "" || rel == ".." || strings.HasPrefix(rel, "../") {
			return fmt.Errorf("%w: copy: archive entry %q is not under %s, or not a clean path", ErrInvalid, hdr.Name, top)
		}
		out := &tar.Header{Name: name, Linkname: hdr.Linkname, Mode: hdr.Mode & 0o7777, Size: hdr.Size, ModTime: hdr.ModTime, Typeflag: hdr.Typeflag}
		if rel != "" {
			out.Name += "/" + rel
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			out.Name += "/"
		case tar.TypeReg, tar.TypeSymlink:
		default:
			return fmt.Errorf("%w: copy: archive entry %q is a %q entry: only directories, regular files and symbolic links are copied", ErrInvalid, hdr.Name, hdr.Typeflag)
		}
		if err := tw.WriteHeader(out); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return err
			}
		}
		var err error
		if hdr, err = tr.Next(); errors.Is(err, io.EOF) {
			return tw.Close()
		} else if err != nil {
			return fmt.Errorf("%w: copy: the archive: %w", ErrInvalid, err)
		}
	}
}

// tempName is a name for a copy's temporary file in the guest that no
// one there can guess.
func tempName() string {
	var b [12]byte
	rand.Read(b[:])
	return ".vmfest-cp-" + hex.EncodeToString(b[:]) + ".tar"
}

// sshCopier moves tars over vmfest's SSH session.
type sshCopier struct {
	m      Machine
	signer ssh.Signer
	// connect, when set, bounds the next connection (the auto probe).
	connect time.Duration
}

func (c *sshCopier) via() string  { return CopyViaSSH }
func (c *sshCopier) close() error { return nil }

// run runs a shell command line and returns its exit status; stderr goes
// into the error of a failed run only.
func (c *sshCopier) run(ctx context.Context, cmd string, stdin io.Reader, stdout io.Writer) (int, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	var stderr bytes.Buffer
	code, err := SSH(ctx, c.m, c.signer, SSHOptions{Command: []string{cmd}, Stdin: stdin, Stdout: stdout, Stderr: &stderr, ConnectTimeout: c.connect})
	if err == nil && code != 0 && stderr.Len() > 0 {
		err = guestCommandError(code, stderr.Bytes())
	}
	return code, err
}

// testScript is the shell test of guestCopier.test for kind, on $1.
func testScript(kind byte) string {
	if kind == 'd' {
		return `test -d "$1"`
	}
	return `test -e "$1" || test -L "$1"`
}

func (c *sshCopier) test(ctx context.Context, kind byte, p string) (bool, error) {
	code, err := c.run(ctx, "set -- "+shQuote(p)+"; "+testScript(kind), nil, nil)
	if err != nil {
		return false, err
	}
	return code == 0, nil
}

func (c *sshCopier) unpack(ctx context.Context, dir string, r io.Reader) error {
	code, err := c.run(ctx, "mkdir -p "+shQuote(dir)+" && tar -x -C "+shQuote(dir)+" -f -", r, nil)
	if err == nil && code != 0 {
		err = guestCommandError(code, nil)
	}
	return err
}

func (c *sshCopier) pack(ctx context.Context, parent, base string) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		code, err := c.run(ctx, "tar -c -C "+shQuote(parent)+" -f - "+shQuote(base), nil, pw)
		if err == nil && code != 0 {
			err = guestCommandError(code, nil)
		}
		pw.CloseWithError(err)
	}()
	return &pipeReader{PipeReader: pr, cancel: cancel, done: done}, nil
}

// pipeReader is the reading end of a stream a goroutine writes; Close
// stops the goroutine and waits for it.
type pipeReader struct {
	*io.PipeReader
	cancel context.CancelFunc
	done   chan struct{}
}

func (p *pipeReader) Close() error {
	p.cancel()
	p.PipeReader.Close()
	<-p.done
	return nil
}

// guestCommandError words a guest command's failure: its exit status and
// what it wrote on stderr.
func guestCommandError(code int, stderr []byte) error {
	msg := strings.TrimSpace(string(stderr))
	if len(msg) > 500 {
		msg = msg[:500] + "..."
	}
	if msg == "" {
		return fmt.Errorf("the guest's tar exited %d", code)
	}
	return fmt.Errorf("the guest's tar exited %d: %s", code, msg)
}

// agentCopier moves tars through the guest agent: a temporary tar file in
// the guest, written or read with the agent's file calls, and the guest's
// tar run with guest-exec.
type agentCopier struct {
	a   driver.Agent
	log *slog.Logger
}

func (c *agentCopier) via() string  { return CopyViaAgent }
func (c *agentCopier) close() error { return c.a.Close() }

// sh runs a shell script in the guest with args as $1...; it returns the
// exit status and the error output.
func (c *agentCopier) sh(ctx context.Context, script string, args ...string) (int, []byte, error) {
	res, err := driver.Exec(ctx, c.a, driver.ExecRequest{Path: "/bin/sh", Args: append([]string{"-c", script, "sh"}, args...)})
	if err != nil {
		return -1, nil, err
	}
	return res.ExitCode, res.Stderr, nil
}

// remove removes a temporary file in the guest, even after ctx ended.
func (c *agentCopier) remove(ctx context.Context, p string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if code, _, err := c.sh(rctx, `rm -f "$1"`, p); err != nil || code != 0 {
		c.log.Warn("copy: could not remove the temporary file in the guest", "path", p, "exit", code, "err", err)
	}
}

func (c *agentCopier) test(ctx context.Context, kind byte, p string) (bool, error) {
	code, _, err := c.sh(ctx, testScript(kind), p)
	return code == 0, err
}

func (c *agentCopier) unpack(ctx context.Context, dir string, r io.Reader) error {
	if code, stderr, err := c.sh(ctx, `mkdir -p "$1"`, dir); err != nil || code != 0 {
		if err == nil {
			err = fmt.Errorf("make %s in the guest: mkdir exited %d: %s", dir, code, strings.TrimSpace(string(stderr)))
		}
		return err
	}
	tmp := path.Join(dir, tempName())
	if _, err := driver.WriteFile(ctx, c.a, tmp, r); err != nil {
		c.remove(ctx, tmp)
		return err
	}
	code, stderr, err := c.sh(ctx, `tar -x -C "$1" -f "$2"; rc=$?; rm -f "$2"; exit $rc`, dir, tmp)
	switch {
	case err != nil:
		c.remove(ctx, tmp)
		return err
	case code != 0:
		return guestCommandError(code, stderr)
	}
	return nil
}

func (c *agentCopier) pack(ctx context.Context, parent, base string) (io.ReadCloser, error) {
	tmp := path.Join("/tmp", tempName())
	code, stderr, err := c.sh(ctx, `cd "$2" 2>/dev/null && { test -e "$3" || test -L "$3"; } || exit 3; tar -c -f "$1" "$3"`, tmp, parent, base)
	switch {
	case err != nil:
		c.remove(ctx, tmp)
		return nil, err
	case code == 3:
		return nil, fmt.Errorf("%w: %s: no such file or directory in the guest", ErrNotFound, path.Join(parent, base))
	case code != 0:
		c.remove(ctx, tmp)
		return nil, guestCommandError(code, stderr)
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := driver.ReadFile(ctx, c.a, tmp, pw)
		c.remove(ctx, tmp)
		pw.CloseWithError(err)
	}()
	return &pipeReader{PipeReader: pr, cancel: cancel, done: done}, nil
}
