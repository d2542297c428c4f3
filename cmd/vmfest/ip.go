package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
)

func (a *app) ipCommand() *cobra.Command {
	var slot int
	var wait time.Duration
	cmd := &cobra.Command{
		Use:     "ip NAME [--slot N] [--wait DUR]",
		Aliases: []string{"get-ip"},
		Short:   "Print the address of a machine's NIC",
		Long: `Print the address of a running machine's NIC (slot 0 by default).

A host-only NIC's address is the one vmfest reserved, once dnsmasq's lease
confirms the guest took it; else the guest agent's report, else the bridge's
neighbour table. A NAT NIC's address is its SSH forward on 127.0.0.1
(printed as IP:PORT). --wait bounds the wait; on timeout the error names
every source asked and what it said.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.findMachine(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), wait)
			defer cancel()
			addr, err := m.IP(ctx, slot)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(addr)
			}
			fmt.Fprintln(a.out, formatAddress(addr))
			return nil
		},
	}
	cmd.Flags().IntVar(&slot, "slot", 0, "the NIC's slot")
	cmd.Flags().DurationVar(&wait, "wait", vmfest.DefaultIPTimeout, "how long to wait for the address")
	return cmd
}

func formatAddress(a vmfest.Address) string {
	if a.Port != 0 {
		return fmt.Sprintf("%s:%d", a.IP, a.Port)
	}
	return a.IP
}
