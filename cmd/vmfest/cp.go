package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/store"
)

// cpProgressOver is the size of a copy past which vmfest cp shows a
// progress bar (on a terminal, without --json).
const cpProgressOver = 8 << 20

func (a *app) cpCommand() *cobra.Command {
	var timeout time.Duration
	var via string
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files and directories between the host and a machine (NAME:/path)",
		Long: `Copy a file or a directory between the host and a running machine; the
machine's side is written NAME:/absolute/path. A destination that is a
directory receives the copy inside it; else the copy takes the
destination's name. Modes are kept. The files travel as a tar stream
that the guest's own tar packs or unpacks; what comes back is unpacked
inside the destination only.

How the stream reaches the guest (--via):
  ssh     over vmfest's SSH session, with the key of the host where the
          machine runs (as vmfest ssh connects); fast, needs the guest's
          SSH server and vmfest's key in it
  agent   through the guest agent's file calls and guest-exec: no
          network and no key; slower, and the guest holds a temporary
          copy of the tar
  (none)  ssh when the guest's SSH server answers within 5 s, else agent
With --server the copy streams through the server, which reaches the
guest as above. On a terminal, a copy over 8 MiB shows a progress bar.

  vmfest cp ./site web:/srv          # ./site becomes /srv/site in web
  vmfest cp web:/var/log/syslog .    # into the current directory
  vmfest cp --via agent app.tar db:/root/`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcName, srcPath, srcGuest := guestPath(args[0])
			dstName, dstPath, dstGuest := guestPath(args[1])
			switch {
			case srcGuest == dstGuest:
				return usageError{errors.New("cp copies between the host and a machine: write exactly one side as NAME:/path")}
			case srcGuest && srcPath == "", dstGuest && dstPath == "":
				return usageError{errors.New("the machine's side needs a path: NAME:/path")}
			}
			switch via {
			case vmfest.CopyViaAuto, vmfest.CopyViaSSH, vmfest.CopyViaAgent:
			default:
				return usageError{fmt.Errorf("--via %q: use ssh or agent (or leave it out: ssh when it answers, else the agent)", via)}
			}
			name := srcName
			if dstGuest {
				name = dstName
			}
			m, err := a.findMachine(cmd.Context(), name)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			opts := vmfest.CopyOptions{Via: via}
			bar := a.progress()
			if bar.tty && !bar.quiet {
				opts.Progress = func(done, total int64) {
					if total > cpProgressOver || (total == 0 && done > cpProgressOver) {
						bar.report(vmfest.Progress{Phase: "copy", Done: done, Total: total})
					}
				}
			}
			if dstGuest {
				err = vmfest.CopyTo(ctx, m, srcPath, dstPath, opts)
			} else {
				err = vmfest.CopyFrom(ctx, m, srcPath, dstPath, opts)
			}
			if err != nil {
				bar.abandon()
				return err
			}
			bar.finish()
			if !a.json {
				fmt.Fprintf(a.out, "copied %s to %s\n", args[0], args[1])
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long the copy may take")
	cmd.Flags().StringVar(&via, "via", "", "how the files reach the guest: ssh or agent (default: ssh when it answers, else agent)")
	return cmd
}

// guestPath splits NAME:/path; a path with no machine name before its
// first colon (./a:b, /x:y) is the host's.
func guestPath(s string) (name, p string, guest bool) {
	n, rest, ok := strings.Cut(s, ":")
	if !ok || strings.ContainsRune(n, '/') || store.ValidateName("machine", n) != nil {
		return "", s, false
	}
	return n, rest, true
}
