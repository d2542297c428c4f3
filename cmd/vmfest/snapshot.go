package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
)

func (a *app) snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "snapshot",
		Aliases: []string{"snap"},
		Args:    cobra.ArbitraryArgs,
		RunE:    unknownSubcommand,
		Short:   "Take, list, restore and delete a machine's snapshots",
		Long: `Snapshots live inside a machine's overlay and go with it when it is
destroyed; the base image is never written.

A snapshot of a running or paused machine holds its disk and its memory
(the machine is paused while it is taken, about half a second for 512 MiB
under TCG); restoring it brings the machine back running where it was, from
any state but saved. A snapshot of a powered-off machine holds its disk
only, and is restored to a powered-off machine. A memory snapshot is
refused while a volume or a disk of yours is attached (it would not hold
them); a disk snapshot holds the machine's own disk, not its volumes.`,
	}
	cmd.AddCommand(
		&cobra.Command{
			Use:   "create NAME SNAPSHOT",
			Short: "Take a snapshot (disk and memory of a running machine, disk of a powered-off one)",
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				m, err := a.findMachine(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				begun := time.Now()
				s, err := m.TakeSnapshot(cmd.Context(), args[1])
				if err != nil {
					return err
				}
				if a.json {
					return a.printJSON(s)
				}
				fmt.Fprintf(a.out, "took snapshot %s of %s (%s) in %s\n", s.Tag, m.Name(), snapshotKind(s), time.Since(begun).Round(time.Millisecond))
				return nil
			},
		},
		&cobra.Command{
			Use:     "list NAME",
			Aliases: []string{"ls"},
			Short:   "List a machine's snapshots, oldest first",
			Args:    cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				m, err := a.findMachine(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				snaps, err := m.Snapshots(cmd.Context())
				if err != nil {
					return err
				}
				if a.json {
					if snaps == nil {
						snaps = []vmfest.Snapshot{}
					}
					return a.printJSON(snaps)
				}
				tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "SNAPSHOT\tHOLDS\tTAKEN\tUPTIME")
				for _, s := range snaps {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Tag, snapshotKind(s), s.Created.Local().Format(time.RFC3339), s.VMClock.Round(time.Second))
				}
				return tw.Flush()
			},
		},
		&cobra.Command{
			Use:   "restore NAME SNAPSHOT",
			Short: "Go back to a snapshot (a memory snapshot comes back running)",
			Args:  cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				m, err := a.findMachine(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				begun := time.Now()
				if err := m.RestoreSnapshot(cmd.Context(), args[1]); err != nil {
					return err
				}
				info, err := m.Info(cmd.Context())
				if err != nil {
					return err
				}
				if a.json {
					return a.printJSON(info)
				}
				fmt.Fprintf(a.out, "restored %s to %s in %s: %s\n", m.Name(), args[1], time.Since(begun).Round(time.Millisecond), info.State)
				return nil
			},
		},
		&cobra.Command{
			Use:     "rm NAME SNAPSHOT...",
			Aliases: []string{"remove", "delete"},
			Short:   "Delete snapshots of a machine",
			Args:    cobra.MinimumNArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				m, err := a.findMachine(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				snaps, err := m.Snapshots(cmd.Context())
				if err != nil {
					return err
				}
				// One at a time: each is a change of the machine's disk.
				var gone []vmfest.Snapshot
				for _, name := range args[1:] {
					if err := m.DeleteSnapshot(cmd.Context(), name); err != nil {
						return err
					}
					for _, s := range snaps {
						if s.Tag == name {
							gone = append(gone, s)
						}
					}
					if !a.json {
						fmt.Fprintf(a.out, "deleted snapshot %s of %s\n", name, m.Name())
					}
				}
				if a.json {
					if len(gone) == 1 {
						return a.printJSON(gone[0])
					}
					return a.printJSON(gone)
				}
				return nil
			},
		},
	)
	return cmd
}

func snapshotKind(s vmfest.Snapshot) string {
	if s.MemorySize > 0 {
		return "disk+memory"
	}
	return "disk"
}
