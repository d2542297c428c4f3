package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api"
)

func (a *app) serveCommand() *cobra.Command {
	var lc api.Listen
	var allow, natAllow, fetchAllow []string
	var rotate, printToken, natLowPorts bool
	var maxSetups int
	var sys systemFlags
	cmd := &cobra.Command{
		Use:   "serve [--listen ADDR] [--unix PATH] [--tls-cert FILE --tls-key FILE] [--insecure] [--allow-path DIR]... [--fetch-allow PREFIX,...] [--nat-allow PREFIX,...] [--nat-low-ports] [--max-setups N] [--system] [--socket-group GROUP --socket-mode 0660] [--admin-group GROUP]",
		Short: "Serve this host's machines over HTTP (the API behind --server)",
		Long: `Serve the local state directory's machines, models and networks over a JSON
HTTP API (see docs/api.md), so that 'vmfest --server URL ...' and Go programs
using vmfest.Connect drive this host as if it were local.

By default the API is on the Unix socket $VMFEST_HOME/vmfest.sock (mode 0600:
only its owner can use it). --system serves the system instance (what the
package's vmfest.service runs, as root): state in /var/lib/vmfest, the socket
/run/vmfest/vmfest.sock owned by root and group vmfest, mode 0660, so that
members of group vmfest drive it (the CLI of a user who is not root and names
no --home or --server uses that socket when it is there). A member is served
as a remote caller: the image and model paths they name must be in the image
models directory or an --allow-path directory, and be files they could open
themselves (read, and write for a disk the machine writes). With --admin-group
(--system: vmfest-admin) machines have owners: the label vmfest/owner records
the creator's uid, and only the owner, root and the group's members may change
a machine; everyone may list and show it.

--listen adds TCP (default port 18083); every TCP request needs
'Authorization: Bearer TOKEN', the token in $VMFEST_HOME/token (made on first
use, mode 0600; --rotate-token replaces it, and a running server takes the new
one at its next request). A non-loopback address needs --tls-cert and
--tls-key, or --insecure (the vmfest CLI never sends a token over plain http
to a host that is not loopback). A token file that others can read, or that
another user owns, is refused: every TCP request then gets 503 until it is put
right.

A remote caller may name disk images and setup-model sources only inside the
image models directory and the --allow-path directories: destroying a machine
on a mutable image deletes that file. A TCP caller's setup-model fetches only
from public addresses, unless --fetch-allow names more (loopback, link-local
and private ranges are refused by default); Unix socket callers who are root
or the server's user are not restricted. At most --max-setups setup-model
operations run at once; the next gets 503 and Retry-After.

Machines' nat-rules listen only on loopback addresses and host ports from
1024 up, unless --nat-allow and --nat-low-ports (env VMFEST_NAT_ALLOW,
VMFEST_NAT_LOW_PORTS; the CLI without --server reads them too) allow more.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.remote != "" {
				return errors.New("serve serves this host: drop --server (and VMFEST_SERVER)")
			}
			nat, err := natPolicyFromEnv()
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("nat-allow") {
				if nat.HostAddresses, err = parsePrefixes("--nat-allow", natAllow); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("nat-low-ports") {
				nat.LowPorts = natLowPorts
			}
			a.nat = &nat
			fetch, err := parsePrefixes("--fetch-allow", fetchAllow)
			if err != nil {
				return err
			}
			if maxSetups < 1 {
				return fmt.Errorf("--max-setups %d: give 1 or more", maxSetups)
			}
			if err := sys.apply(cmd, a, &lc); err != nil {
				return err
			}
			if sys.system && lc.Unix != "" {
				if err := os.MkdirAll(filepath.Dir(lc.Unix), 0o755); err != nil {
					return fmt.Errorf("--system: the socket's directory: %w", err)
				}
			}
			l, err := a.local()
			if err != nil {
				return err
			}
			lc.TokenFile = filepath.Join(l.Home(), api.TokenFile)
			if rotate || printToken {
				tok, err := api.LoadToken(lc.TokenFile)
				if rotate {
					tok, err = api.RotateToken(lc.TokenFile)
				}
				if err != nil {
					return err
				}
				fmt.Fprintln(a.out, tok)
				return nil
			}
			if !cmd.Flags().Changed("unix") && !sys.system {
				lc.Unix = filepath.Join(l.Home(), api.SocketFile)
			}
			if lc.TCP != "" {
				if _, err := api.TCPAddress(lc.TCP, lc.TLSCert != "", lc.Insecure); err != nil {
					return err
				}
				if _, err := api.LoadToken(lc.TokenFile); err != nil {
					return err
				}
				fmt.Fprintf(a.errOut, "token for TCP clients: %s (vmfest serve --print-token)\n", lc.TokenFile)
			}
			s, err := api.New(cmd.Context(), l, api.Config{Home: l.Home(), AllowPaths: allow, FetchAllow: fetch, MaxSetups: maxSetups, Logger: a.serveLogger()})
			if err != nil {
				return err
			}
			defer s.Close()
			leave, err := a.joinPool(cmd.Context(), l, lc)
			if err != nil {
				return err
			}
			defer leave()
			err = s.Serve(cmd.Context(), lc)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&lc.TCP, "listen", "", "also serve on TCP at ADDR (host:port; default port 18083); needs the token")
	cmd.Flags().StringVar(&lc.Unix, "unix", "", "Unix socket path (default $VMFEST_HOME/vmfest.sock; \"\" for none)")
	cmd.Flags().StringVar(&lc.TLSCert, "tls-cert", "", "TLS certificate (PEM) for --listen")
	cmd.Flags().StringVar(&lc.TLSKey, "tls-key", "", "TLS private key (PEM) for --listen")
	cmd.Flags().BoolVar(&lc.Insecure, "insecure", false, "allow plain HTTP on a non-loopback --listen address")
	cmd.Flags().StringArrayVar(&allow, "allow-path", nil, "a directory whose files remote callers may name as disk images or model sources (repeatable)")
	cmd.Flags().StringSliceVar(&fetchAllow, "fetch-allow", nil, "address prefixes (e.g. 10.1.0.0/16) a TCP caller's setup-model may fetch from beside public addresses (repeatable or comma-separated)")
	cmd.Flags().StringSliceVar(&natAllow, "nat-allow", nil, "address prefixes beyond loopback that nat-rules may listen on, e.g. 0.0.0.0/0 for any (default env VMFEST_NAT_ALLOW)")
	cmd.Flags().BoolVar(&natLowPorts, "nat-low-ports", false, "let nat-rules take host ports below 1024 (default env VMFEST_NAT_LOW_PORTS)")
	cmd.Flags().IntVar(&maxSetups, "max-setups", api.DefaultMaxSetups, "setup-model operations run at once at most")
	cmd.Flags().BoolVar(&rotate, "rotate-token", false, "replace the TCP bearer token, print it and exit")
	cmd.Flags().BoolVar(&printToken, "print-token", false, "print the TCP bearer token (made if missing) and exit")
	sys.add(cmd)
	a.addServePoolFlags(cmd)
	return cmd
}

// connect opens the remote server at --server with the token remoteToken
// chooses.
func (a *app) connect() (vmfest.Server, error) {
	tok, err := a.remoteToken()
	if err != nil {
		return nil, err
	}
	r, err := vmfest.Connect(a.remote, vmfest.WithToken(tok))
	if err != nil {
		return nil, fmt.Errorf("--server: %w", err)
	}
	return r, nil
}

// remoteToken chooses the bearer token for --server. A Unix socket needs
// none. --token or VMFEST_TOKEN names it for any server; the token file in
// --home is this host's, so it goes only to a server on a loopback address.
// No token goes over plain http to a server that is not on this host.
func (a *app) remoteToken() (string, error) {
	tok := a.token
	if tok == "" {
		tok = os.Getenv("VMFEST_TOKEN")
	}
	u, err := url.Parse(a.remote)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return "", nil // a Unix socket needs no token; Connect explains a bad URL
	}
	onHost := loopbackHost(u.Hostname())
	if u.Scheme == "http" && !onHost {
		return "", fmt.Errorf("--server %s: plain http reaches only a server on this host (the token would cross the network in clear): use https:// (vmfest serve --tls-cert, --tls-key) with --token, or a tunnel to a loopback port", a.remote)
	}
	if tok != "" {
		return tok, nil
	}
	if !onHost {
		return "", fmt.Errorf("--server %s: give --token or VMFEST_TOKEN (the server's vmfest serve --print-token): the token file in --home is used only for a server on this host", a.remote)
	}
	data, err := os.ReadFile(filepath.Join(a.home, api.TokenFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("--token not given, and %w", err)
	}
	return strings.TrimSpace(string(data)), nil
}

// loopbackHost reports whether host (a URL's host name, without port or
// brackets) is this host: localhost or a loopback address.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Zone() == "" && ip.Unmap().IsLoopback()
}

// serveLogger logs what the server does at info level (debug with -v).
func (a *app) serveLogger() *slog.Logger {
	level := slog.LevelInfo
	if a.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(a.errOut, &slog.HandlerOptions{Level: level}))
}
