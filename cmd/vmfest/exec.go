package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vmfest/vmfest"
)

func (a *app) execCommand() *cobra.Command {
	var timeout time.Duration
	var env []string
	cmd := &cobra.Command{
		Use:   "exec NAME [--timeout DUR] [--env NAME=VALUE]... -- COMMAND [ARG...]",
		Short: "Run a command in a machine through its guest agent (no network, no key)",
		Long: `Run COMMAND in a running machine through its guest agent (guest-exec):
no network and no SSH key are needed. Its output comes back when it ends,
stdout to stdout and stderr to stderr, and vmfest exits with its status
(128+N when signal N ended it). Standard input, when it is not a terminal,
is passed to the command (at most 4 MiB). --timeout bounds the command.

Flags are vmfest's until "--"; everything after it is the command.`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			switch {
			case dash < 0 && len(args) <= 1:
				return errors.New(`exec needs NAME, then "--" and the command (vmfest exec web -- uname -a)`)
			case dash < 0:
				return fmt.Errorf("put the command after \"--\" (vmfest exec %s -- %s)", args[0], strings.Join(args[1:], " "))
			case dash != 1:
				return fmt.Errorf("exec needs exactly one NAME before \"--\", got %d", dash)
			case len(args) == 1:
				return errors.New(`exec needs the command after "--"`)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			req := vmfest.ExecRequest{Command: args[1:], Env: env}
			if !term.IsTerminal(int(os.Stdin.Fd())) {
				data, err := io.ReadAll(io.LimitReader(os.Stdin, vmfest.MaxExecStdin+1))
				if err != nil {
					return fmt.Errorf("read standard input: %w", err)
				}
				if len(data) > vmfest.MaxExecStdin {
					return usageError{fmt.Errorf("standard input is more than %d bytes: a guest-agent command carries no more; copy large files with vmfest ssh", vmfest.MaxExecStdin)}
				}
				req.Stdin = data
			}
			m, err := a.findMachine(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			res, err := m.Exec(ctx, req)
			if err != nil {
				return err
			}
			if a.json {
				if err := a.printJSON(res); err != nil {
					return err
				}
			} else {
				a.out.Write(res.Stdout)
				a.errOut.Write(res.Stderr)
				if res.StdoutTruncated || res.StderrTruncated {
					fmt.Fprintln(a.errOut, "warning: the command wrote more than the guest agent keeps; the rest of its output was dropped")
				}
			}
			switch {
			case res.Signal != 0:
				return exitError{128 + res.Signal}
			case res.ExitCode != 0:
				return exitError{res.ExitCode}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", vmfest.DefaultExecTimeout, "how long the command may run")
	cmd.Flags().StringArrayVar(&env, "env", nil, "the command's environment, NAME=VALUE (repeatable; given, it is the whole environment)")
	return cmd
}
