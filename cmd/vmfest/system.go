package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest/api"
)

// The system instance: one vmfest server per host, run by root (the
// package's vmfest.service runs 'vmfest serve --system'), whose socket
// members of SystemGroup may use.
const (
	// SystemHome is the system instance's state directory.
	SystemHome = "/var/lib/vmfest"
	// SystemSocket is the system instance's Unix socket.
	SystemSocket = "/run/vmfest/vmfest.sock"
	// SystemGroup is the group whose members may use SystemSocket.
	SystemGroup = "vmfest"
	// SystemAdminGroup is the group whose members may change any machine
	// of the system instance (others only their own).
	SystemAdminGroup = "vmfest-admin"
	// systemSocketEnv names another system socket for the CLI to look
	// for (tests, a second instance).
	systemSocketEnv = "VMFEST_SYSTEM_SOCKET"
)

// systemSocket is the path of the system instance's socket the CLI looks
// for: $VMFEST_SYSTEM_SOCKET, else SystemSocket.
func systemSocket() string {
	if p := os.Getenv(systemSocketEnv); p != "" {
		return p
	}
	return SystemSocket
}

// systemChoice is what the CLI found of the system instance.
type systemChoice struct {
	url  string // unix:///run/vmfest/vmfest.sock when it is used
	note string // why it is or is not used (for -v and version)
	err  error  // the socket is there but this user may not use it
}

// chooseSystem decides, once, whether this invocation drives the system
// instance: only for a user who is not root and chose no server, pool or
// state directory of their own (--server, VMFEST_SERVER, --pool, --home,
// VMFEST_HOME), and only when its socket is there. A socket this user may
// not open is an error that says how to get access; a socket nobody
// answers on (the service is stopped) leaves them on their own home, with
// a warning.
func (a *app) chooseSystem() systemChoice {
	if a.system != nil {
		return *a.system
	}
	c := a.findSystem()
	a.system = &c
	switch {
	case c.url != "" && a.verbose:
		fmt.Fprintf(a.errOut, "using the system vmfest server at %s (%s)\n", c.url, c.note)
	case c.url == "" && c.err == nil && c.note != "" && a.verbose:
		fmt.Fprintf(a.errOut, "not using the system vmfest server: %s; using --home %s\n", c.note, a.home)
	}
	return c
}

func (a *app) findSystem() systemChoice {
	switch {
	case os.Geteuid() == 0:
		return systemChoice{note: "root uses its own --home"}
	case a.remote != "" || a.pool.endpoints != "":
		return systemChoice{note: "--server or --pool given"}
	case a.homeChosen():
		return systemChoice{note: "--home or VMFEST_HOME given"}
	}
	path := systemSocket()
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return systemChoice{note: "no socket at " + path}
	}
	if err == nil && st.Mode().Type() != fs.ModeSocket {
		return systemChoice{note: path + " is not a socket"}
	}
	if err == nil {
		var conn net.Conn
		conn, err = net.DialTimeout("unix", path, 2*time.Second)
		if err == nil {
			conn.Close()
			return systemChoice{url: "unix://" + path, note: "the system instance"}
		}
	}
	switch {
	case errors.Is(err, fs.ErrPermission):
		return systemChoice{err: noAccessError{path: path, err: err}}
	case errors.Is(err, syscall.ECONNREFUSED):
		fmt.Fprintf(a.errOut, "warning: the system vmfest server is not running (nobody answers on %s: 'systemctl start vmfest'); using your own state directory %s\n", path, a.home)
		return systemChoice{note: "nobody answers on " + path}
	}
	return systemChoice{note: fmt.Sprintf("%s: %v", path, err)}
}

// homeChosen reports whether the user named a state directory (--home or
// VMFEST_HOME): then they drive it, not the system instance.
func (a *app) homeChosen() bool {
	if os.Getenv("VMFEST_HOME") != "" {
		return true
	}
	return a.homeFlag != nil && a.homeFlag.Changed
}

// noAccessError is a system socket this user may not open.
type noAccessError struct {
	path string
	err  error
}

func (e noAccessError) Error() string {
	return fmt.Sprintf("cannot use the system vmfest server at %s: permission denied; to use it, join the group %s ('sudo usermod -aG %s $USER', then log in again or run 'newgrp %s'), or keep machines of your own with --home ~/.vmfest (or VMFEST_HOME) and NAT-only hardware (host-only networks need root)",
		e.path, SystemGroup, SystemGroup, SystemGroup)
}

func (e noAccessError) Unwrap() error { return e.err }

// serverLine says which server this invocation talks to (for 'vmfest
// version'): "" for the local state directory chosen by default or by
// --home, so that version prints what it always did there.
func (a *app) serverLine() string {
	switch {
	case a.pool.endpoints != "":
		return "server: the pool at " + a.pool.endpoints
	case a.remote != "":
		return "server: " + a.remote
	}
	c := a.chooseSystem()
	switch {
	case c.url != "":
		return "server: " + c.url + " (the system instance)"
	case c.err != nil:
		return "server: none: " + c.err.Error()
	}
	return ""
}

// systemFlags are serve's flags for the system instance.
type systemFlags struct {
	system bool
	group  string
	mode   string
	admin  string
}

func (f *systemFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.system, "system", false, "serve the system instance: --home "+SystemHome+", --unix "+SystemSocket+", --socket-group "+SystemGroup+", --socket-mode 0660, --admin-group "+SystemAdminGroup+" (each flag given overrides its part)")
	cmd.Flags().StringVar(&f.admin, "admin-group", "", "give the Unix socket's machines owners: a caller may change only the machines they created, unless root or in this group (a name or a numeric ID)")
	cmd.Flags().StringVar(&f.group, "socket-group", "", "give the Unix socket this group (a name or a numeric ID), whose members may then use it with --socket-mode 0660")
	cmd.Flags().StringVar(&f.mode, "socket-mode", "", "the Unix socket's mode: 0600 (default: its owner only) or 0660 (its owner and --socket-group)")
}

// apply fills in what --system means for the flags not given (into lc),
// and parses --socket-mode.
func (f *systemFlags) apply(cmd *cobra.Command, a *app, lc *api.Listen) error {
	group, modeText, admin := f.group, f.mode, f.admin
	unix := &lc.Unix
	if f.system {
		if !cmd.Flags().Changed("admin-group") {
			admin = SystemAdminGroup
		}
		if !cmd.Flags().Changed("home") {
			a.home = SystemHome
		}
		if !cmd.Flags().Changed("unix") {
			*unix = SystemSocket
		}
		if !cmd.Flags().Changed("socket-group") {
			group = SystemGroup
		}
		if !cmd.Flags().Changed("socket-mode") {
			modeText = "0660"
		}
	}
	lc.SocketGroup, lc.AdminGroup, lc.SocketMode = group, admin, 0
	if modeText == "" {
		return nil
	}
	m, err := strconv.ParseUint(modeText, 8, 32)
	if err != nil || (m != 0o600 && m != 0o660) {
		return fmt.Errorf("--socket-mode %q: give 0600 (the owner only) or 0660 (the owner and --socket-group)", modeText)
	}
	lc.SocketMode = fs.FileMode(m)
	return nil
}

// ownerColumn is list's OWNER column, shown when a machine has an owner
// (api.OwnerLabel: the system instance records who created it).
type ownerColumn bool

func anyOwner(rows []row) ownerColumn {
	for _, r := range rows {
		if _, ok := r.Labels[api.OwnerLabel]; ok {
			return true
		}
	}
	return false
}

func (c ownerColumn) header() string {
	if !c {
		return ""
	}
	return "\tOWNER"
}

// cell is the owner's login name (its uid when this host has no such
// user; "-" for none).
func (c ownerColumn) cell(labels map[string]string) string {
	if !c {
		return ""
	}
	uid, ok := labels[api.OwnerLabel]
	if !ok {
		return "\t-"
	}
	if u, err := user.LookupId(uid); err == nil {
		return "\t" + u.Username
	}
	return "\t" + uid
}
