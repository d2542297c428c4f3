package vmfest

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Files are copied to and from a guest as a tar stream through vmfest's SSH
// session (the guest's own tar: busybox's or GNU's), so any guest with an
// SSH server and tar takes them, modes kept, in one round trip. What comes
// back from a guest is hostile input: it is unpacked inside the
// destination only (os.Root: no name, "..", absolute path or symbolic link
// reaches outside it), as regular files, directories and symbolic links,
// never devices.

// CopyTo copies the host file or directory src into machine m as guest
// path dst: into dst when dst is a directory in the guest, else as dst.
func CopyTo(ctx context.Context, m Machine, signer ssh.Signer, src, dst string) error {
	st, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if !st.IsDir() && !st.Mode().IsRegular() {
		return fmt.Errorf("%w: copy %s: not a file or a directory", ErrInvalid, src)
	}
	dir, name, err := guestTarget(ctx, m, signer, dst, filepath.Base(src))
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, src, name)) }()
	var stderr bytes.Buffer
	code, err := SSH(ctx, m, signer, SSHOptions{
		Command: []string{"mkdir -p " + shQuote(dir) + " && tar -x -C " + shQuote(dir) + " -f -"},
		Stdin:   pr, Stdout: io.Discard, Stderr: &stderr,
	})
	pr.Close()
	if err != nil {
		return fmt.Errorf("copy %s to machine %s: %w", src, m.Name(), err)
	}
	if code != 0 {
		return fmt.Errorf("copy %s to machine %s:%s: the guest's tar exited %d: %s", src, m.Name(), dst, code, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// guestTarget decides where a copy lands in the guest: inside dst when it
// is a directory there, else dst itself.
func guestTarget(ctx context.Context, m Machine, signer ssh.Signer, dst, base string) (dir, name string, err error) {
	code, err := SSH(ctx, m, signer, SSHOptions{Command: []string{"test -d " + shQuote(dst)}, Stdout: io.Discard, Stderr: io.Discard})
	if err != nil {
		return "", "", fmt.Errorf("copy to machine %s: %w", m.Name(), err)
	}
	if code == 0 {
		return dst, base, nil
	}
	clean := path.Clean(dst)
	if clean == "/" || clean == "." {
		return "", "", fmt.Errorf("%w: copy to machine %s: destination %q", ErrInvalid, m.Name(), dst)
	}
	return path.Dir(clean), path.Base(clean), nil
}

// writeTar writes src as a tar stream whose top entry is named name.
func writeTar(w io.Writer, src, name string) error {
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
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// CopyFrom copies guest path src of machine m to the host as dst: into dst
// when it is a directory, else as dst.
func CopyFrom(ctx context.Context, m Machine, signer ssh.Signer, src, dst string) error {
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
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := readTar(pr, root, path.Base(clean), name)
		pr.CloseWithError(err)
		done <- err
	}()
	var stderr bytes.Buffer
	code, err := SSH(ctx, m, signer, SSHOptions{
		Command: []string{"tar -c -C " + shQuote(path.Dir(clean)) + " -f - " + shQuote(path.Base(clean))},
		Stdout:  pw, Stderr: &stderr,
	})
	pw.Close()
	terr := <-done
	switch {
	case err != nil:
		return fmt.Errorf("copy %s:%s: %w", m.Name(), src, err)
	case code != 0:
		return fmt.Errorf("copy %s:%s: the guest's tar exited %d: %s", m.Name(), src, code, strings.TrimSpace(stderr.String()))
	case terr != nil:
		return fmt.Errorf("copy %s:%s to %s: %w", m.Name(), src, dst, terr)
	}
	return nil
}

// readTar unpacks a tar stream from a guest into root, renaming its top
// entry from top to name. Every entry must be top or below it.
func readTar(r io.Reader, root *os.Root, top, name string) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
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
			_, err = io.Copy(f, tr)
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
