package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/spec"
)

// setCommand changes a powered-off machine's hardware.
func (a *app) setCommand() *cobra.Command {
	var hardware, diskSize string
	var memory, cpus int
	cmd := &cobra.Command{
		Use:   "set NAME [--hardware MODEL|FILE] [--memory MiB] [--cpus N] [--disk-size SIZE]",
		Short: "Change a powered-off machine's hardware",
		Long: `Change a powered-off machine's hardware, validated as at create.

--hardware replaces it with a hardware model or spec file (its NICs must be
on the same networks: changing a machine's NICs means recreating it);
--memory, --cpus and --disk-size are laid over the result. A larger
--disk-size (512M, 20G, 1T) grows the machine's overlay; a disk never
shrinks.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.change(cmd, args[0], hardware, memory, cpus, diskSize)
		},
	}
	cmd.Flags().StringVar(&hardware, "hardware", "", "hardware model name or hardware spec file")
	cmd.Flags().IntVar(&memory, "memory", 0, "memory in MiB")
	cmd.Flags().IntVar(&cpus, "cpus", 0, "virtual CPUs")
	cmd.Flags().StringVar(&diskSize, "disk-size", "", "grow the machine's disk to this size: 512M, 20G, 1T")
	return cmd
}

// resizeCommand grows a powered-off machine's disk.
func (a *app) resizeCommand() *cobra.Command {
	var diskSize string
	cmd := &cobra.Command{
		Use:   "resize NAME --disk-size SIZE",
		Short: "Grow a powered-off machine's disk (same as set --disk-size)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if diskSize == "" {
				return usageError{errors.New("--disk-size is required: the disk's new size, e.g. 20G")}
			}
			return a.change(cmd, args[0], "", 0, 0, diskSize)
		},
	}
	cmd.Flags().StringVar(&diskSize, "disk-size", "", "the disk's new size: 512M, 20G, 1T (never smaller than it is)")
	return cmd
}

func (a *app) change(cmd *cobra.Command, name, hardware string, memory, cpus int, diskSize string) error {
	if cmd.Flags().Changed("memory") && memory <= 0 {
		return usageError{fmt.Errorf("--memory %d: must be a positive number of MiB", memory)}
	}
	if cmd.Flags().Changed("cpus") && cpus <= 0 {
		return usageError{fmt.Errorf("--cpus %d: must be at least 1", cpus)}
	}
	c := vmfest.Change{MemorySize: memory, CPUCount: cpus}
	if diskSize != "" {
		size, err := spec.ParseSize(diskSize)
		if err == nil && size == 0 {
			err = errors.New("must be more than 0")
		}
		if err != nil {
			return usageError{fmt.Errorf("--disk-size %s: %w", diskSize, err)}
		}
		c.DiskSize = size
	}
	srv, err := a.server()
	if err != nil {
		return err
	}
	if hardware != "" {
		hw, err := hardwareChoice(cmd.Context(), srv, hardware, 0, 0, 0)
		if err != nil {
			return err
		}
		c.Hardware = &hw
	}
	if c == (vmfest.Change{}) {
		return usageError{errors.New("nothing to change: give --hardware, --memory, --cpus or --disk-size")}
	}
	m, err := srv.FindMachine(cmd.Context(), name)
	if err != nil {
		return err
	}
	if err := m.Set(cmd.Context(), c); err != nil {
		return err
	}
	info, done, err := a.infoOrJSON(cmd.Context(), m)
	if done || err != nil {
		return err
	}
	size := "the image's"
	if info.HardwareSpec.DiskSize != 0 {
		size = info.HardwareSpec.DiskSize.String()
	}
	fmt.Fprintf(a.out, "changed %s: hardware %s (%d MiB, %d CPU, disk %s)\n", info.Name, info.Hardware, info.HardwareSpec.MemorySize, info.HardwareSpec.CPUCount, size)
	return nil
}
