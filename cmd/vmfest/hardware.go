package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest/spec"
)

func (a *app) hardwareCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "hardware",
		Short: "Hardware models (machine sizes)",
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List hardware models",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			names, err := srv.HardwareModels(cmd.Context())
			if err != nil {
				return err
			}
			type item struct {
				Name       string `json:"name"`
				MemorySize int    `json:"memory-size"`
				CPUCount   int    `json:"cpu-count"`
				NICs       int    `json:"nics"`
				Error      string `json:"error,omitempty"`
			}
			var items []item
			for _, n := range names {
				h, err := srv.HardwareModel(cmd.Context(), n)
				if err != nil {
					items = append(items, item{Name: n, Error: oneLine(err.Error())})
					continue
				}
				items = append(items, item{Name: n, MemorySize: h.MemorySize, CPUCount: h.CPUCount, NICs: len(h.Network)})
			}
			if a.json {
				return a.printJSON(items)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tMEMORY\tCPUS\tNICS")
			for _, it := range items {
				if it.Error != "" {
					fmt.Fprintf(tw, "%s\t%s\t\t\n", it.Name, it.Error)
					continue
				}
				fmt.Fprintf(tw, "%s\t%d MiB\t%d\t%d\n", it.Name, it.MemorySize, it.CPUCount, it.NICs)
			}
			return tw.Flush()
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "show NAME",
		Short: "Show a hardware model as YAML (or JSON with --json)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			h, err := srv.HardwareModel(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(h)
			}
			out, err := spec.MarshalYAML(h)
			if err != nil {
				return err
			}
			_, err = a.out.Write(out)
			return err
		},
	})
	return cmd
}
