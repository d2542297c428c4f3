package vmfest

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// Files are copied to and from a guest as a tar stream: the host side
// (CopyTo, CopyFrom) packs and unpacks it, and the machine moves it in and
// out of the guest (Machine.CopyIn, Machine.CopyOut), over vmfest's SSH
// session or through the guest agent's file calls, locally or through a
// vmfest server. The guest's own tar (busybox's or GNU's) unpacks and packs
// it, so modes are kept. What comes back from a guest is hostile input: it
// is unpacked inside the destination only (os.Root: no name, "..",
// absolute path or symbolic link reaches outside it), as regular files,
// directories and symbolic links, never devices.

// The transports of a copy (CopyOptions.Via).
const (
	// CopyViaAuto uses SSH when the machine's SSH server answers vmfest's
	// key within CopySSHProbe, else the guest agent.
	CopyViaAuto = ""
	// CopyViaSSH streams the tar over vmfest's SSH session (as vmfest ssh
	// connects, with the key of the host where the machine runs).
	CopyViaSSH = "ssh"
	// CopyViaAgent moves the tar through the guest agent's file calls
	// (guest-file-write, guest-file-read) and runs the guest's tar with
	// guest-exec: no network and no key, at the cost of a temporary copy
	// of the tar in the guest.
	CopyViaAgent = "agent"
)

// CopySSHProbe bounds how long CopyViaAuto tries the guest's SSH server
// before it turns to the guest agent.
const CopySSHProbe = 5 * time.Second

// CopyOptions tunes a copy.
type CopyOptions struct {
	// Via chooses the transport: CopyViaAuto (the default), CopyViaSSH or
	// CopyViaAgent.
	Via string `json:"via,omitempty"`
	// Progress, when set, is called as the copy goes with the bytes of
	// file data moved so far and the total (0 when unknown: a copy from a
	// guest does not know it beforehand). Host side only.
	Progress func(done, total int64) `json:"-"`
}

// checkVia checks a CopyOptions.Via.
func checkVia(via string) error {
	switch via {
	case CopyViaAuto, CopyViaSSH, CopyViaAgent:
		return nil
	}
	return fmt.Errorf("%w: copy via %q: use %q or %q (or nothing: ssh when it answers, else the agent)", ErrInvalid, via, CopyViaSSH, CopyViaAgent)
}

// CopyTo copies the host file or directory src into machine m as guest
// path dst: into dst when dst is a directory in the guest, else as dst.
func CopyTo(ctx context.Context, m Machine, src, dst string, opts CopyOptions) error {
	if err := checkVia(opts.Via); err != nil {
		return err
	}
	st, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if !st.IsDir() && !st.Mode().IsRegular() {
		return fmt.Errorf("%w: copy %s: not a file or a directory", ErrInvalid, src)
	}
	var total int64
	if opts.Progress != nil {
		if total, err = treeSize(src); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
	}
	pr, pw := io.Pipe()
	written := make(chan struct{})
	go func() {
		defer close(written)
		pc := &progressCounter{report: opts.Progress, total: total}
		pw.CloseWithError(writeTar(pw, src, filepath.Base(src), pc))
	}()
	err = m.CopyIn(ctx, dst, pr, CopyOptions{Via: opts.Via})
	pr.CloseWithError(errors.New("the copy ended"))
	<-written // no progress report after CopyTo returns
	if err != nil {
		return fmt.Errorf("copy %s to %s:%s: %w", src, m.Name(), dst, err)
	}
	return nil
}

// treeSize adds up the sizes of the regular files under src.
func treeSize(src string) (int64, error) {
	var total int64
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		st, err := d.Info()
		if err == nil {
			total += st.Size()
		}
		return err
	})
	return total, err
}

// progressCounter reports the file bytes copied so far, at most every
// progressEvery bytes and at the end.
type progressCounter struct {
	report      func(done, total int64)
	done, total int64
	last        int64
}

const progressEvery = 256 << 10

func (p *progressCounter) add(n int64) {
	if p == nil || p.report == nil {
		return
	}
	p.done += n
	if p.done-p.last >= progressEvery || (p.total > 0 && p.done == p.total) {
		p.last = p.done
		p.report(p.done, p.total)
	}
}

// countingWriter counts what goes through it into a progressCounter.
type countingWriter struct {
	w io.Writer
	p *progressCounter
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.p.add(int64(n))
	return n, err
}

// writeTar writes src as a tar stream whose top entry is named name,
// counting the file data into pc (which may be nil).
func writeTar(w io.Writer, src, name string, pc *progressCounter) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if st.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(st, link)
		if err != nil {
			return err
		}
		hdr.Name = path.Join(name, filepath.ToSlash(rel))
		hdr.Uname, hdr.Gname, hdr.Uid, hdr.Gid = "", "", 0, 0
		if d.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !st.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(countingWriter{tw, pc}, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// CopyFrom copies guest path src of machine m to the host as dst: into dst
// when it is a directory, else as dst.
func CopyFrom(ctx context.Context, m Machine, src, dst string, opts CopyOptions) error {
	if err := checkVia(opts.Via); err != nil {
		return err
	}
	clean := path.Clean(src)
	if clean == "/" || clean == "." {
		return fmt.Errorf("%w: copy from machine %s: source %q: name a file or a directory under /", ErrInvalid, m.Name(), src)
	}
	dir, name := dst, path.Base(clean)
	if st, err := os.Stat(dst); err != nil || !st.IsDir() {
		dir, name = filepath.Dir(dst), filepath.Base(dst)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("copy to %s: %w", dir, err)
	}
	defer root.Close()
	rc, err := m.CopyOut(ctx, src, CopyOptions{Via: opts.Via})
	if err != nil {
		return fmt.Errorf("copy %s:%s: %w", m.Name(), src, err)
	}
	err = readTar(rc, root, path.Base(clean), name, &progressCounter{report: opts.Progress})
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s:%s to %s: %w", m.Name(), src, dst, err)
	}
	return nil
}

// readTar unpacks a tar stream from a guest into root, renaming its top
// entry from top to name, counting the file data into pc (which may be
// nil). Every entry must be top or below it. It reads the stream to its
// end, so an error the stream's source reports there is returned.
func readTar(r io.Reader, root *os.Root, top, name string, pc *progressCounter) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// Past the end-of-archive blocks: the source's own verdict.
			_, err := io.Copy(io.Discard, r)
			return err
		}
		if err != nil {
			return err
		}
		p := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		rest, ok := strings.CutPrefix(p, top)
		if !ok || (rest != "" && rest[0] != '/') || path.IsAbs(p) {
			return fmt.Errorf("the guest sent %q, outside %s: refused", hdr.Name, top)
		}
		target := name + rest
		mode := fs.FileMode(hdr.Mode) & 0o777
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(target, 0o755); err != nil {
				return err
			}
			if err := root.Chmod(target, mode|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := root.MkdirAll(path.Dir(target), 0o755); err != nil {
				return err
			}
			f, err := root.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(countingWriter{f, pc}, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := root.Chmod(target, mode); err != nil {
				return err
			}
		case tar.TypeSymlink:
			root.Remove(target)
			if err := root.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		default:
			// Devices, FIFOs, hard links: not copied.
		}
	}
}

// shQuote quotes s for a POSIX shell.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
