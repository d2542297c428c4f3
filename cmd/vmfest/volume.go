package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api"
	"github.com/vmfest/vmfest/spec"
)

func (a *app) volumeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "volume",
		Aliases: []string{"vol"},
		Args:    cobra.ArbitraryArgs,
		RunE:    unknownSubcommand,
		Short:   "Manage volumes: disks that outlive the machines they are attached to",
		Long: `Manage volumes.

A volume is an empty qcow2 disk in the state directory, attached to one
machine at a time: at create (vmfest create --volume NAME) or to a
powered-off machine (vmfest attach NAME VOLUME). Destroying the machine
keeps the volume and its data; attach it to another machine to use them
there. A volume attached to a machine cannot be removed.`,
	}
	cmd.AddCommand(a.volumeCreateCommand(), a.volumeListCommand(), a.volumeShowCommand(), a.volumeRemoveCommand())
	return cmd
}

func (a *app) volumeCreateCommand() *cobra.Command {
	var size string
	var labels []string
	cmd := &cobra.Command{
		Use:   "create NAME --size SIZE [--label key=value]...",
		Short: "Create an empty volume (512M, 20G, 1T)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if size == "" {
				return usageError{errors.New("--size is required: the volume's size, such as 512M, 20G or 1T")}
			}
			sz, err := spec.ParseSize(size)
			if err != nil {
				return usageError{fmt.Errorf("--size %s: %w", size, err)}
			}
			vs := vmfest.VolumeSpec{Name: args[0], Size: sz}
			for _, l := range labels {
				k, v, _, err := vmfest.ParseLabel(l, false)
				if err != nil {
					return usageError{fmt.Errorf("--label: %w", err)}
				}
				if vs.Labels == nil {
					vs.Labels = map[string]string{}
				}
				vs.Labels[k] = v
			}
			srv, err := a.server()
			if err != nil {
				return err
			}
			v, err := srv.CreateVolume(cmd.Context(), vs)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(v)
			}
			fmt.Fprintf(a.out, "created volume %s (%s)\n", v.Name, v.Size)
			return nil
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "virtual size: 512M, 20G, 1T or bytes")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "a key=value label (repeatable)")
	return cmd
}

func (a *app) volumeListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the volumes and where each is attached",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			vs, err := srv.Volumes(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				if vs == nil {
					vs = []vmfest.Volume{}
				}
				return a.printJSON(vs)
			}
			owners := ownerColumn(false)
			for _, v := range vs {
				if _, ok := v.Labels[api.OwnerLabel]; ok {
					owners = true
				}
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSIZE\tUSED\tMACHINE\tSLOT"+owners.header())
			for _, v := range vs {
				slot := "-"
				if v.Slot != nil {
					slot = slotText(*v.Slot)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s%s\n", v.Name, v.Size, bytesText(v.Allocated), dash(v.Machine), slot, owners.cell(v.Labels))
			}
			return tw.Flush()
		},
	}
}

func (a *app) volumeShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a volume",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			v, err := srv.Volume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(v)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "name:\t%s\n", v.Name)
			fmt.Fprintf(tw, "size:\t%s\n", v.Size)
			fmt.Fprintf(tw, "used:\t%s on the host\n", bytesText(v.Allocated))
			fmt.Fprintf(tw, "format:\t%s\n", v.Format)
			fmt.Fprintf(tw, "path:\t%s\n", v.Path)
			if v.Machine != "" {
				fmt.Fprintf(tw, "attached:\tto %s at %s\n", v.Machine, slotText(*v.Slot))
			} else {
				fmt.Fprintf(tw, "attached:\tno\n")
			}
			fmt.Fprintf(tw, "created:\t%s\n", v.Created.Local().Format(time.RFC3339))
			fmt.Fprintf(tw, "labels:\t%s\n", labelText(v.Labels))
			return tw.Flush()
		},
	}
}

func (a *app) volumeRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:        "rm NAME...",
		Aliases:    []string{"remove"},
		SuggestFor: []string{"delete", "del"},
		Short:      "Delete volumes and their data (refused while attached to a machine)",
		Args:       cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			// --json prints each volume as show --json did just before
			// it went.
			return eachNamed(a, args, "volumes", func(name string) (vmfest.Volume, error) {
				v, err := srv.Volume(cmd.Context(), name)
				if err != nil {
					return v, err
				}
				if err := srv.RemoveVolume(cmd.Context(), name); err != nil {
					return v, err
				}
				if !a.json {
					fmt.Fprintf(a.out, "removed volume %s\n", name)
				}
				return v, nil
			})
		},
	}
}

// mediaFlags are the flags that name what goes in a storage slot.
type mediaFlags struct {
	iso, disk, slot string
}

func (f *mediaFlags) add(cmd *cobra.Command, verb string) {
	cmd.Flags().StringVar(&f.iso, "iso", "", "an ISO image file to "+verb+" (a dvd slot, read-only)")
	cmd.Flags().StringVar(&f.disk, "disk", "", "a disk image file (qcow2 or raw) to "+verb+" (a hard-disk slot, written; vmfest never deletes it)")
	cmd.Flags().StringVar(&f.slot, "slot", "", `the storage slot, CONTROLLER:N (e.g. "IDE Controller:1"); default: the first free one`)
}

// attachment is what the command line names: a volume (the argument), an
// ISO or a disk, and a slot.
func (f *mediaFlags) attachment(volume string) (vmfest.Attachment, error) {
	at := vmfest.Attachment{Volume: volume}
	var err error
	if f.iso != "" {
		if at.ISO, err = filepath.Abs(f.iso); err != nil {
			return at, err
		}
	}
	if f.disk != "" {
		if at.Disk, err = filepath.Abs(f.disk); err != nil {
			return at, err
		}
	}
	if f.slot != "" {
		mp, err := parseSlot(f.slot)
		if err != nil {
			return at, usageError{err}
		}
		at.Slot = &mp
	}
	return at, nil
}

// parseSlot reads CONTROLLER:N.
func parseSlot(s string) (spec.MountPoint, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return spec.MountPoint{}, fmt.Errorf("--slot %q: write CONTROLLER:N, e.g. \"IDE Controller:1\"", s)
	}
	n, err := strconv.Atoi(s[i+1:])
	if err != nil || n < 0 {
		return spec.MountPoint{}, fmt.Errorf("--slot %q: the slot after ':' must be a number from 0", s)
	}
	return spec.MountPoint{Controller: s[:i], Slot: n}, nil
}

func slotText(m spec.MountPoint) string { return fmt.Sprintf("%s:%d", m.Controller, m.Slot) }

func (a *app) attachCommand() *cobra.Command {
	var f mediaFlags
	cmd := &cobra.Command{
		Use:   "attach NAME [VOLUME] [--iso FILE | --disk FILE] [--slot CONTROLLER:N]",
		Short: "Put a volume, an ISO or a disk in a storage slot of a machine",
		Long: `Put a volume (by name), an ISO (--iso, read-only in a dvd slot) or a disk
image of your own (--disk, written by the guest, never deleted by vmfest) in
a storage slot of a machine: --slot, else the first free one. A disk goes
to a virtio controller named Volumes when no slot is free; an ISO goes to
an empty dvd drive first. A volume or a disk is one machine's at a time; an
ISO may be in any number of machines.

A running machine gets it hot-plugged: a disk in a free slot of a virtio
controller (the guest sees a new virtio disk), an ISO in an empty dvd drive
other than the cloud-init seed's.

  vmfest attach web data                   # the volume data
  vmfest attach web --iso ./tools.iso
  vmfest attach web data --slot "IDE Controller:3"`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.slotCommand(cmd, args, f, "attached", "attach", vmfest.Machine.Attach)
		},
	}
	f.add(cmd, "attach")
	return cmd
}

func (a *app) detachCommand() *cobra.Command {
	var f mediaFlags
	cmd := &cobra.Command{
		Use:   "detach NAME [VOLUME] [--iso FILE | --disk FILE | --slot CONTROLLER:N]",
		Short: "Take a volume, an ISO or a disk out of a machine (the file is kept)",
		Long: `Take a volume, an ISO or a disk out of a machine, named as it was attached
or by its slot alone. The file itself is kept; a dvd slot stays as an empty
drive. From a running machine a disk on a virtio controller is unplugged
once the guest lets it go, and an ISO's medium is removed; other disks
need it powered off.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.slotCommand(cmd, args, f, "detached", "detach", vmfest.Machine.Detach)
		},
	}
	f.add(cmd, "detach")
	return cmd
}

func (a *app) slotCommand(cmd *cobra.Command, args []string, f mediaFlags, did, verb string, act func(vmfest.Machine, context.Context, vmfest.Attachment) (spec.MountPoint, error)) error {
	volume := ""
	if len(args) == 2 {
		volume = args[1]
	}
	n := 0
	for _, s := range []string{volume, f.iso, f.disk} {
		if s != "" {
			n++
		}
	}
	if n > 1 || (n == 0 && (verb == "attach" || f.slot == "")) {
		what := "a VOLUME, --iso FILE or --disk FILE"
		if verb == "detach" {
			what += ", or only --slot"
		}
		return usageError{fmt.Errorf("%s needs one of %s", verb, what)}
	}
	at, err := f.attachment(volume)
	if err != nil {
		return err
	}
	m, err := a.findMachine(cmd.Context(), args[0])
	if err != nil {
		return err
	}
	slot, err := act(m, cmd.Context(), at)
	if err != nil {
		return err
	}
	if a.json {
		info, err := m.Info(cmd.Context())
		if err != nil {
			return err
		}
		return a.printJSON(info)
	}
	what := at.String()
	if at.Volume == "" && at.ISO == "" && at.Disk == "" {
		what = "what it held"
	}
	fmt.Fprintf(a.out, "%s %s: %s at %s\n", did, m.Name(), what, slotText(slot))
	return nil
}

func volumeNames(ctx context.Context, srv vmfest.Server) ([]string, error) {
	vs, err := srv.Volumes(ctx)
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.Name
	}
	return out, err
}

// bytesText writes a byte count in the largest binary unit below it.
func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
