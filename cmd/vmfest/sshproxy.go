package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
)

// sshProxyCommand is an SSH client's ProxyCommand: stdin and stdout become
// the machine's SSH connection, made as vmfest ssh makes it (through
// --server's API, or to the machine's endpoint on this host).
func (a *app) sshProxyCommand() *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "ssh-proxy NAME [--wait DUR]",
		Short: "Connect stdin and stdout to a machine's SSH server (an ssh ProxyCommand)",
		Long: `Connect stdin and stdout to a running machine's SSH server, as vmfest ssh
connects: through --server's API (so only the server need be reachable), or
to the machine's NAT forward or host-only address on this host. For SSH
clients of your own, and what vmfest inventory gives Ansible with --server:

  ssh -o ProxyCommand='vmfest ssh-proxy %h' -i ~/.vmfest/ssh/id_ed25519 root@web
  ansible -i ./vmfest-inventory all -m raw -a hostname

--wait bounds the wait for the guest's SSH server to answer.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			m, err := a.findMachine(ctx, args[0])
			if err != nil {
				return err
			}
			dctx, cancel := context.WithTimeout(ctx, wait)
			conn, err := vmfest.DialSSH(dctx, m)
			cancel()
			if err != nil {
				return err
			}
			return splice(ctx, conn, os.Stdin, a.out)
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for the machine's SSH server")
	return cmd
}

// splice copies in to conn and conn to out until the connection ends (the
// server closes it) or ctx does. The end of in closes conn's write side.
func splice(ctx context.Context, conn net.Conn, in io.Reader, out io.Writer) error {
	defer conn.Close()
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, conn)
		done <- err
	}()
	go func() {
		io.Copy(conn, in)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	select {
	case err := <-done:
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
