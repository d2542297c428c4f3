package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
)

func (a *app) cloneCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "clone SOURCE NEW",
		Short: "Make a new machine from a machine: powered off, or running from its memory",
		Long: `Clone SOURCE as NEW: the same image, hardware, labels, user-data and
driver, with new MAC addresses, host-only address reservations and VM
generation ID; its disk is a copy of SOURCE's overlay over the same base
image (a reflink where the file system has them, else a sparse copy).
SOURCE is never changed.

Of a powered-off or aborted SOURCE the clone is powered off. Of a saved,
running or paused SOURCE the clone starts from SOURCE's memory instead of
booting (a running SOURCE is paused only while its state is written and its
disk copied, a paused one stays paused), and its guest is then
re-identified through its guest agent: each NIC takes the clone's MAC and
renews its DHCP address, the host name becomes NEW, the clock is set, and
the guest gets fresh randomness. A guest without an agent keeps SOURCE's
MACs, address and host name in the guest: vmfest says so, marks the clone
(reidentify-pending in "show --json") and keeps its NICs unplugged; saving
and starting it tries again, powering it down and starting it boots it with
its own MACs.

A machine without an overlay (a mutable image), or with a volume or a disk
of yours in a slot, cannot be cloned; ISOs are shared.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			m, err := a.findMachine(ctx, args[0])
			if err != nil {
				return err
			}
			begun := time.Now()
			c, err := m.Clone(ctx, args[1])
			took := time.Since(begun)
			if c == nil || (err != nil && !errors.Is(err, vmfest.ErrNotReidentified)) {
				return err
			}
			if err != nil {
				fmt.Fprintf(a.errOut, "warning: %v\n", err)
			}
			if a.json {
				info, ierr := c.Info(ctx)
				if ierr != nil {
					return ierr
				}
				return a.printJSON(info)
			}
			st, serr := c.State(ctx)
			if serr != nil {
				return serr
			}
			fmt.Fprintf(a.out, "cloned %s as %s (%s) in %s\n", m.Name(), c.Name(), st, took.Round(time.Millisecond))
			return nil
		},
	}
}
