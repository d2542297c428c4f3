package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest/spec"
)

// hardwareItem is a hardware model as hardware list prints it, and as
// hardware add and rm print the model they added or removed under --json.
type hardwareItem struct {
	Name       string `json:"name"`
	MemorySize int    `json:"memory-size"`
	CPUCount   int    `json:"cpu-count"`
	NICs       int    `json:"nics"`
	Error      string `json:"error,omitempty"`
}

func newHardwareItem(name string, h spec.Hardware) hardwareItem {
	return hardwareItem{Name: name, MemorySize: h.MemorySize, CPUCount: h.CPUCount, NICs: len(h.Network)}
}

func (a *app) hardwareCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "hardware",
		Args:  cobra.ArbitraryArgs,
		RunE:  unknownSubcommand,
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
			items := []hardwareItem{}
			for _, n := range names {
				h, err := srv.HardwareModel(cmd.Context(), n)
				if err != nil {
					items = append(items, hardwareItem{Name: n, Error: oneLine(err.Error())})
					continue
				}
				items = append(items, newHardwareItem(n, h))
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
	cmd.AddCommand(a.hardwareAddCommand(), &cobra.Command{
		Use:        "rm NAME",
		Aliases:    []string{"remove"},
		SuggestFor: []string{"delete", "del"},
		Short:      "Remove a user hardware model (built-in ones stay)",
		Args:       cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			h, err := srv.HardwareModel(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if err := srv.RemoveHardwareModel(cmd.Context(), args[0]); err != nil {
				return err
			}
			if a.json {
				// As hardware list --json printed it.
				return a.printJSON(newHardwareItem(args[0], h))
			}
			fmt.Fprintf(a.out, "removed hardware model %s\n", args[0])
			return nil
		},
	})
	return cmd
}

func (a *app) hardwareAddCommand() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "add FILE [--name NAME]",
		Short: "Add a hardware model from a YAML or JSON hardware spec file",
		Long: `Add a hardware model from a hardware spec file (YAML or JSON, VMFest's keys).
The spec is checked (unknown keys, values, with defaults applied) before it is
saved. The name is the file's name without its extension unless --name is
given; a model of that name must not exist (a built-in one is shadowed).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return fileError("hardware add", args[0], err)
			}
			h, err := spec.ParseHardware(data)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if name == "" {
				base := filepath.Base(args[0])
				name = strings.TrimSuffix(base, filepath.Ext(base))
			}
			srv, err := a.server()
			if err != nil {
				return err
			}
			if err := srv.AddHardwareModel(cmd.Context(), name, h); err != nil {
				return err
			}
			if a.json {
				saved, err := srv.HardwareModel(cmd.Context(), name)
				if err != nil {
					return err
				}
				return a.printJSON(newHardwareItem(name, saved))
			}
			fmt.Fprintf(a.out, "added hardware model %s\n", name)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "model name (default: the file name without its extension)")
	return cmd
}
