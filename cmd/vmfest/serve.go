package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api"
)

func (a *app) serveCommand() *cobra.Command {
	var lc api.Listen
	var allow []string
	var rotate, printToken bool
	cmd := &cobra.Command{
		Use:   "serve [--listen ADDR] [--unix PATH] [--tls-cert FILE --tls-key FILE] [--insecure] [--allow-path DIR]...",
		Short: "Serve this host's machines over HTTP (the API behind --server)",
		Long: `Serve the local state directory's machines, models and networks over a JSON
HTTP API (see docs/api.md), so that 'vmfest --server URL ...' and Go programs
using vmfest.Connect drive this host as if it were local.

By default the API is on the Unix socket $VMFEST_HOME/vmfest.sock (mode 0600:
only its owner can use it). --listen adds TCP (default port 18083); every
TCP request needs 'Authorization: Bearer TOKEN', the token in
$VMFEST_HOME/token (made on first use, mode 0600; --rotate-token replaces it,
and a running server takes the new one at its next request). A non-loopback
address needs --tls-cert and --tls-key, or --insecure.

A remote caller may name disk images and setup-model sources only inside
the image models directory and the --allow-path directories: destroying a
machine on a mutable image deletes that file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.remote != "" {
				return errors.New("serve serves this host: drop --server (and VMFEST_SERVER)")
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
			if !cmd.Flags().Changed("unix") {
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
			s, err := api.New(cmd.Context(), l, api.Config{Home: l.Home(), AllowPaths: allow, Logger: a.serveLogger()})
			if err != nil {
				return err
			}
			defer s.Close()
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
	cmd.Flags().BoolVar(&rotate, "rotate-token", false, "replace the TCP bearer token, print it and exit")
	cmd.Flags().BoolVar(&printToken, "print-token", false, "print the TCP bearer token (made if missing) and exit")
	return cmd
}

// connect opens the remote server at --server with --token, VMFEST_TOKEN,
// or the token file in --home (same host).
func (a *app) connect() (vmfest.Server, error) {
	tok := a.token
	if tok == "" {
		tok = os.Getenv("VMFEST_TOKEN")
	}
	if tok == "" && !strings.HasPrefix(a.remote, "unix:") {
		data, err := os.ReadFile(filepath.Join(a.home, api.TokenFile))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("--token not given, and %w", err)
		}
		tok = strings.TrimSpace(string(data))
	}
	r, err := vmfest.Connect(a.remote, vmfest.WithToken(tok))
	if err != nil {
		return nil, fmt.Errorf("--server: %w", err)
	}
	return r, nil
}

// serveLogger logs what the server does at info level (debug with -v).
func (a *app) serveLogger() *slog.Logger {
	level := slog.LevelInfo
	if a.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(a.errOut, &slog.HandlerOptions{Level: level}))
}
