package api

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest"
)

// DefaultPort is the TCP port of --listen when the address has none
// (VirtualBox's web service port, as VMFest users know it).
const DefaultPort = vmfest.DefaultServerPort

// SocketFile is the name of the default Unix socket in the state directory.
const SocketFile = "vmfest.sock"

// Listen says where to serve.
type Listen struct {
	// Unix is the path of a Unix socket (mode 0600 unless SocketMode
	// says otherwise: only its owner can connect, so no token is asked);
	// "" for none.
	Unix string
	// SocketGroup, when set, is the group (a name or a numeric ID) the
	// Unix socket is given, so that its members may connect when
	// SocketMode lets them (the system instance: group vmfest, 0660).
	SocketGroup string
	// SocketMode is the Unix socket's mode: 0600 (the default, for 0) or
	// 0660. Others never get access.
	SocketMode fs.FileMode
	// AdminGroup, when set (a name or a numeric ID), gives the Unix
	// socket's machines owners: a caller owns what they create (see
	// OwnerLabel) and may change only that, unless they are root, the
	// server's user or a member of this group.
	AdminGroup string
	// TCP is host:port; "" for none. Every request on it needs the token.
	TCP string
	// TLSCert and TLSKey serve TCP over TLS.
	TLSCert, TLSKey string
	// Insecure allows plain HTTP on a non-loopback TCP address.
	Insecure bool
	// TokenFile holds the bearer token for TCP (see LoadToken).
	TokenFile string
}

// TCPAddress completes addr with DefaultPort and refuses, without TLS and
// unless insecure, any address but a loopback one: the token would cross
// the network in clear.
func TCPAddress(addr string, tls, insecure bool) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		host, port = addr, strconv.Itoa(DefaultPort)
		if _, _, err2 := net.SplitHostPort(net.JoinHostPort(host, port)); err2 != nil {
			return "", fmt.Errorf("--listen %q: give host:port: %w", addr, err)
		}
	}
	if port == "" {
		port = strconv.Itoa(DefaultPort)
	}
	if tls || insecure {
		return net.JoinHostPort(host, port), nil
	}
	loopback := host == "localhost"
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		loopback = true
	}
	if !loopback {
		shown := host
		if shown == "" {
			shown = "every interface"
		}
		return "", fmt.Errorf("--listen %s: refusing plain HTTP on %s (not loopback): give --tls-cert and --tls-key, or --insecure to send the token in clear", addr, shown)
	}
	return net.JoinHostPort(host, port), nil
}

// socketAccess checks lc's socket group and mode and returns the mode and
// the group ID (-1 for none).
func socketAccess(lc Listen) (fs.FileMode, int, error) {
	mode := lc.SocketMode
	if mode == 0 {
		mode = 0o600
	}
	if mode != 0o600 && mode != 0o660 {
		return 0, -1, fmt.Errorf("socket mode %#o: give 0600 (the owner only) or 0660 (the owner and --socket-group)", uint32(mode))
	}
	gid, err := groupID("socket group", lc.SocketGroup)
	return mode, gid, err
}

// groupID resolves a group name or numeric ID; -1 for "".
func groupID(what, group string) (int, error) {
	if group == "" {
		return -1, nil
	}
	gid, err := strconv.Atoi(group)
	if err != nil {
		g, lerr := user.LookupGroup(group)
		if lerr != nil {
			return -1, fmt.Errorf("%s %q: %w (create it: groupadd --system %s)", what, group, lerr, group)
		}
		gid, err = strconv.Atoi(g.Gid)
		if err != nil {
			return -1, fmt.Errorf("%s %q: gid %q: %w", what, group, g.Gid, err)
		}
	}
	if gid < 0 {
		return -1, fmt.Errorf("%s %q: give a group name or an ID from 0", what, group)
	}
	return gid, nil
}

// listenUnix opens a Unix socket with mode 0600, then gives it group gid
// (unless -1) and the mode asked for. A stale socket at path (a socket
// nobody answers on) is replaced; a live one means another server runs;
// anything else there (a file, a directory, a symlink) is refused and left
// alone.
func listenUnix(path string, mode fs.FileMode, gid int) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket (%s): remove it yourself or give another --unix path", path, fileKind(st.Mode()))
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another vmfest server is listening there", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: cannot tell whether the socket there is stale: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove the stale socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	old := unix.Umask(0o177) // the socket is created 0600, never wider
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, err
	}
	// The group first, while the mode still shuts everyone else out.
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("give the socket group %d: %w", gid, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// peerKey keys, in a request's context, the credentials of the process at
// the other end of the Unix socket (see PeerCred).
type peerKey struct{}

// withPeerCred is a ConnContext that stashes a Unix connection's peer
// credentials and supplementary groups.
func withPeerCred(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var groups []uint32
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err == nil {
			groups, _ = peerGroups(int(fd)) // unknown: only the primary group counts
		}
	})
	if err != nil || cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, &peer{cred: *cred, groups: groups})
}

// unixHandler serves the Unix socket: its callers are this host's user
// (LocalHandler) when they are root or the server's own user; anyone else
// who can open it (a member of its group) is treated as a remote caller
// (Handler), whose setup-model fetches pass the fetch policy, and may name
// only host files they could open themselves (checkCallerFiles). A caller
// whose credentials cannot be read is a remote one.
func (s *Server) unixHandler() http.Handler {
	local, remote := s.LocalHandler(), s.Handler()
	self := uint32(os.Geteuid())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := r.Context().Value(peerKey{}).(*peer)
		if ok && (p.cred.Uid == 0 || p.cred.Uid == self) {
			local.ServeHTTP(w, r)
			return
		}
		if ok {
			if err := checkCallerFiles(w, r, p); err != nil {
				s.refuse(w, err)
				return
			}
		}
		remote.ServeHTTP(w, r)
	})
}

// fileKind names a file's type for an error message.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	}
	return "a " + m.Type().String() + " file"
}

// Serve serves the API on the listeners lc names until ctx is done, then
// shuts down (letting requests finish for up to 10 s) and closes s.
func (s *Server) Serve(ctx context.Context, lc Listen) error {
	if lc.Unix == "" && lc.TCP == "" {
		return errors.New("serve: give a Unix socket or a TCP address")
	}
	type served struct {
		srv *http.Server
		l   net.Listener
		tls bool
	}
	var all []served
	closeAll := func() {
		for _, x := range all {
			x.l.Close()
		}
	}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	newHTTP := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       time.Minute, // headers and body; answers may take longer
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          errLog,
			BaseContext:       func(net.Listener) context.Context { return s.ctx },
		}
	}
	// Check everything before opening anything.
	var addr string
	if lc.TCP != "" {
		var err error
		if addr, err = TCPAddress(lc.TCP, lc.TLSCert != "", lc.Insecure); err != nil {
			return err
		}
		if (lc.TLSCert == "") != (lc.TLSKey == "") {
			return errors.New("serve: give both --tls-cert and --tls-key")
		}
		if lc.TokenFile == "" {
			return errors.New("serve: TCP needs a token file")
		}
		if _, err := LoadToken(lc.TokenFile); err != nil {
			return err
		}
	}
	if lc.Unix != "" {
		mode, gid, err := socketAccess(lc)
		if err != nil {
			return fmt.Errorf("serve on %s: %w", lc.Unix, err)
		}
		adminGID, err := groupID("admin group", lc.AdminGroup)
		if err != nil {
			return fmt.Errorf("serve on %s: %w", lc.Unix, err)
		}
		l, err := listenUnix(lc.Unix, mode, gid)
		if err != nil {
			return fmt.Errorf("serve on %s: %w", lc.Unix, err)
		}
		h := s.unixHandler()
		if lc.AdminGroup != "" {
			h = s.recoverer(s.ownerGuard(h, adminGID))
		}
		hs := newHTTP(h)
		hs.ConnContext = withPeerCred
		all = append(all, served{srv: hs, l: l})
		s.log.Info("listening", "unix", lc.Unix, "mode", fmt.Sprintf("%#o", uint32(mode)), "group", lc.SocketGroup, "admin-group", lc.AdminGroup)
	}
	if lc.TCP != "" {
		hs := newHTTP(requireToken(s.Handler(), lc.TokenFile, s.log))
		if lc.TLSCert != "" {
			cert, err := tls.LoadX509KeyPair(lc.TLSCert, lc.TLSKey)
			if err != nil {
				closeAll()
				return fmt.Errorf("serve: TLS key pair: %w", err)
			}
			hs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("serve: %w", err)
		}
		if hs.TLSConfig != nil {
			l = tls.NewListener(l, hs.TLSConfig)
		}
		all = append(all, served{srv: hs, l: l, tls: hs.TLSConfig != nil})
		s.log.Info("listening", "tcp", l.Addr().String(), "tls", hs.TLSConfig != nil)
	}
	errc := make(chan error, len(all))
	for _, x := range all {
		go func() { errc <- x.srv.Serve(x.l) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.Close() // ends event streams and waits, which Shutdown does not
	for _, x := range all {
		x.srv.Shutdown(sctx)
	}
	if lc.Unix != "" {
		if st, serr := os.Lstat(lc.Unix); serr == nil && st.Mode().Type() == fs.ModeSocket {
			os.Remove(lc.Unix) // our socket, unless replaced by a socket meanwhile
		}
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
