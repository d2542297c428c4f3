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

func (a *app) cpCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files and directories between the host and a machine (NAME:/path)",
		Long: `Copy a file or a directory between the host and a running machine; the
machine's side is written NAME:/path. A destination that is a directory
receives the copy inside it; else the copy takes the destination's name.
Modes are kept. The files travel as a tar stream over vmfest's SSH
session (as vmfest ssh connects), so the guest needs an SSH server and
tar; what comes back is unpacked inside the destination only.

  vmfest cp ./site web:/srv          # ./site becomes /srv/site in web
  vmfest cp web:/var/log/syslog .    # into the current directory`,
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
			name := srcName
			if dstGuest {
				name = dstName
			}
			m, err := a.findMachine(cmd.Context(), name)
			if err != nil {
				return err
			}
			signer, _, err := vmfest.LoadSSHKey(a.home)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if dstGuest {
				err = vmfest.CopyTo(ctx, m, signer, srcPath, dstPath)
			} else {
				err = vmfest.CopyFrom(ctx, m, signer, srcPath, dstPath)
			}
			if err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(a.out, "copied %s to %s\n", args[0], args[1])
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long the copy may take")
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
