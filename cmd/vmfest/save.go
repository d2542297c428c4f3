package main

import (
	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
)

func (a *app) saveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "save NAME...",
		Short: "Save machines' memory and device state to disk and end them",
		Long: `Save running or paused machines: each one's memory and device state is
written beside its disk and its QEMU ends; the machine then reads as saved.
"vmfest start" resumes it exactly where it was (a machine saved paused comes
back paused) and sets the guest's clock through its guest agent;
"vmfest power-down" or "vmfest destroy" discards the saved state.

A saved machine's hardware cannot change (set, resize, attach and detach
refuse it). A machine that is already saved is left so: vmfest says so and,
for it, exits 0. The libvirt driver cannot save machines.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.eachMachine(cmd, args, "saved", func(m vmfest.Machine) (*vmfest.Info, error) {
				return nil, a.makeItSo(cmd.Context(), m, vmfest.Saved, func() error { return m.Save(cmd.Context()) })
			})
		},
	}
}
