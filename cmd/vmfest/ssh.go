package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api"
)

// exitError carries a remote command's exit status out of the CLI.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("remote command exited with status %d", e.code) }

func (a *app) sshCommand() *cobra.Command {
	var wait time.Duration
	var user string
	cmd := &cobra.Command{
		Use:   "ssh NAME [--wait DUR] [-l USER] [-- COMMAND...]",
		Short: "Log in to a machine, or run a command on it, over SSH",
		Long: `Log in to a running machine over SSH with vmfest's own key
($VMFEST_HOME/ssh/id_ed25519, given to cloud-init images in their seed), or
run COMMAND there and exit with its status. The connection goes through the
machine's NAT SSH forward on 127.0.0.1 when it has one, else to its
host-only address. --wait bounds the wait for the address and the SSH
server. A machine that is not running (paused, say) is refused at once.

With --server the connection is tunnelled through the server's API (GET
/v1/machines/NAME/ssh), so only the server needs to reach the machine. The
key is still this client's ($VMFEST_HOME/ssh/id_ed25519 of --home):
'vmfest --server URL create' adds its public key to the machines it creates,
so those just work. A machine someone else created lets you in only if its
creator gave your key with --ssh-key (your $VMFEST_HOME/ssh/id_ed25519.pub),
or with the image's password when it has one.

On a terminal the session gets a pseudo-terminal, for COMMAND too (as
ssh -t), so Ctrl-C interrupts the remote command.

Flags are vmfest's, before or after NAME, until "--": everything after it
is the remote command, flags included (vmfest ssh web -l root -- ls -l).`,
		Args: func(cmd *cobra.Command, args []string) error {
			before := len(args)
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				before = dash
			}
			switch {
			case before == 0:
				return fmt.Errorf("ssh needs the machine's NAME before %q", "--")
			case before > 1:
				return fmt.Errorf("unexpected argument %q after NAME: put the remote command after \"--\" (vmfest ssh %s -- %s)", args[1], args[0], strings.Join(args[1:before], " "))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.findMachine(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			// Made on first use, even when the machine cannot answer.
			signer, _, err := vmfest.LoadSSHKey(a.home)
			if err != nil {
				return err
			}
			// Only a running machine answers: a paused one is said so
			// at once (as ip does), not after the whole --wait.
			st, err := m.State(cmd.Context())
			if err != nil {
				return err
			}
			if st != vmfest.Running {
				err := error(&vmfest.StateError{Machine: m.Name(), Op: "ssh to", State: st, Needs: []vmfest.State{vmfest.Running}})
				if st == vmfest.Paused {
					err = fmt.Errorf("%w; 'vmfest resume %s' continues it", err, m.Name())
				}
				return err
			}
			command := args[1:] // Args allows only NAME before "--"
			// --wait bounds finding the machine and connecting, never
			// the session: a long command runs to its end.
			opts := vmfest.SSHOptions{Command: command, Stdin: os.Stdin, Stdout: a.out, Stderr: a.errOut, User: user, ConnectTimeout: wait}
			ctx := cmd.Context()
			// A terminal gets a pseudo-terminal, for a shell and for
			// a command too (as ssh -t): Ctrl-C then reaches the
			// remote command as its own interrupt, instead of ending
			// vmfest and leaving the command running.
			fd := int(os.Stdin.Fd())
			if term.IsTerminal(fd) && (len(opts.Command) == 0 || isTerminal(a.termOut)) {
				opts.TTY = true
				opts.Width, opts.Height, _ = term.GetSize(fd)
				old, err := term.MakeRaw(fd)
				if err != nil {
					return err
				}
				defer term.Restore(fd, old)
			}
			code, err := vmfest.SSH(ctx, m, signer, opts)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for the machine's address and SSH server")
	cmd.Flags().StringVarP(&user, "user", "l", "", "log in as this user (default: the image's username, else root)")
	return cmd
}

// withOwnKey adds this client's own public key (vmfest's key in --home)
// to keys when the machine is created through a --server whose state
// directory is another one (a server over --home's own socket already
// gives the guest that key), so that vmfest ssh --server logs in with it.
// A key given twice is given once.
func (a *app) withOwnKey(keys []string) ([]string, error) {
	if (a.remote == "" && a.pool.endpoints == "") || a.remote == "unix://"+filepath.Join(a.home, api.SocketFile) {
		return keys, nil
	}
	_, pub, err := vmfest.LoadSSHKey(a.home)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if sameKey(k, pub) {
			return keys, nil
		}
	}
	return append(keys, pub), nil
}

// sameKey reports whether two authorized_keys lines hold one key (their
// type and base64 fields agree; comments and options aside).
func sameKey(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	return len(fa) >= 2 && len(fb) >= 2 && fa[0] == fb[0] && fa[1] == fb[1]
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// sshKeys reads --ssh-key files (OpenSSH public keys, one or more a file).
func sshKeys(paths []string) ([]string, error) {
	var keys []string
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("--ssh-key: %w", err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if !strings.HasPrefix(line, "ssh-") && !strings.HasPrefix(line, "ecdsa-") && !strings.HasPrefix(line, "sk-") {
				return nil, fmt.Errorf("--ssh-key %s: %q is not an OpenSSH public key (give the .pub file)", p, truncateKey(line))
			}
			keys = append(keys, line)
		}
	}
	return keys, nil
}

func truncateKey(s string) string {
	if len(s) > 30 {
		return s[:30] + "..."
	}
	return s
}
