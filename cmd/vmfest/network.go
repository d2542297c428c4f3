package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
)

func (a *app) networkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "network",
		Aliases: []string{"net"},
		Args:    cobra.ArbitraryArgs,
		RunE:    unknownSubcommand,
		Short:   "Manage vmfest's host-only and internal networks",
		Long: `Manage vmfest's networks.

A host-only network is a Linux bridge with the host at .1 of its subnet and a
dnsmasq giving each machine the address vmfest reserved for it. An internal
network is a bridge with no host address and no DHCP: its machines reach
each other and nothing else. A network a hardware spec names is created on
first use; the bridge and dnsmasq exist only while a machine on it runs.`,
	}
	cmd.AddCommand(a.networkListCommand(), a.networkCreateCommand(), a.networkRemoveCommand())
	return cmd
}

func (a *app) networkListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the networks",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			nets, err := srv.Networks(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				if nets == nil {
					nets = []vmfest.Network{}
				}
				return a.printJSON(nets)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tSUBNET\tHOST IP\tMACHINES")
			for _, n := range nets {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Kind, dash(n.Subnet), dash(n.HostIP), dash(strings.Join(n.Machines, ",")))
			}
			return tw.Flush()
		},
	}
}

func (a *app) networkCreateCommand() *cobra.Command {
	var s vmfest.NetworkSpec
	cmd := &cobra.Command{
		Use:   "create NAME [--kind host-only|internal] [--subnet CIDR]",
		Short: "Create a network (nothing is set up on the host until a machine on it starts)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			s.Name = args[0]
			n, err := srv.CreateNetwork(cmd.Context(), s)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(n)
			}
			if n.Subnet != "" {
				fmt.Fprintf(a.out, "created %s network %s on %s (host %s)\n", n.Kind, n.Name, n.Subnet, n.HostIP)
			} else {
				fmt.Fprintf(a.out, "created %s network %s\n", n.Kind, n.Name)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&s.Kind, "kind", "host-only", "host-only or internal")
	cmd.Flags().StringVar(&s.Subnet, "subnet", "", "IPv4 subnet in CIDR form (host-only; default: the next free 192.168.X.0/24)")
	return cmd
}

func (a *app) networkRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:        "rm NAME...",
		Aliases:    []string{"remove"},
		SuggestFor: []string{"delete", "del"},
		Short:      "Remove networks (refused while machines use them)",
		Args:       cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srv, err := a.server()
			if err != nil {
				return err
			}
			nets, err := srv.Networks(cmd.Context())
			if err != nil {
				return err
			}
			// --json prints each network as list --json did just
			// before it went.
			return eachNamed(a, args, "networks", func(name string) (vmfest.Network, error) {
				gone := vmfest.Network{Name: name}
				for _, n := range nets {
					if n.Name == name {
						gone = n
					}
				}
				if err := srv.RemoveNetwork(cmd.Context(), name); err != nil {
					return gone, err
				}
				if !a.json {
					fmt.Fprintf(a.out, "removed %s\n", name)
				}
				return gone, nil
			})
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// addresses renders what is known of a machine's addresses without
// asking the guest: reserved host-only addresses, then NAT SSH forwards.
func addresses(nics []vmfest.NICInfo) string {
	var out []string
	for _, n := range nics {
		if n.IP != "" {
			out = append(out, n.IP)
		}
	}
	for _, n := range nics {
		if n.SSH != "" {
			out = append(out, "ssh "+n.SSH)
		}
	}
	return dash(strings.Join(out, ", "))
}
