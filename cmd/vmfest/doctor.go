package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func (a *app) doctorCommand() *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "doctor [--dry-run]",
		Short: "Find and repair what interrupted operations left in the state directory",
		Long: `Check the local state directory for what a crash or a killed command can
leave behind (half-created or half-destroyed machines, temporary files, stale
stop marks) and repair it. What may be yours — a corrupt machine.json, a
missing disk, an aborted machine — is reported, never deleted.

doctor checks only the local state directory (--home): the API has no
doctor, so with --server (or VMFEST_SERVER) it is refused; run it on the
server's host, against the server's --home.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.remote != "" {
				return fmt.Errorf("doctor checks only the local state directory (--home %s), not the server at %s: the API has no doctor; run 'vmfest doctor --home DIR' on the server's host (or drop --server / unset VMFEST_SERVER to check this one)", a.home, a.remote)
			}
			l, err := a.local()
			if err != nil {
				return err
			}
			found, err := l.Doctor(cmd.Context(), !dryRun)
			if err != nil {
				return err
			}
			if a.json {
				if found == nil {
					return a.printJSON([]struct{}{})
				}
				return a.printJSON(found)
			}
			if len(found) == 0 {
				fmt.Fprintln(a.out, "all well: nothing to repair in", l.Home())
				return nil
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tMACHINE\tPATH\tSTATUS")
			for _, f := range found {
				status := f.Detail
				if f.Fixed {
					status = "repaired (" + f.Detail + ")"
				}
				m := f.Machine
				if m == "" {
					m = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Kind, m, f.Path, status)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only report")
	return cmd
}
