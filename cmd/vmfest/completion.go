package main

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
)

// completeTimeout bounds the server calls of one completion: a slow or
// absent --server must not hang the shell.
const completeTimeout = 3 * time.Second

// names lists the names of one kind of object on the server (the local
// state directory or --server), for shell completion.
type names func(ctx context.Context, srv vmfest.Server) ([]string, error)

func machineNames(ctx context.Context, srv vmfest.Server) ([]string, error) {
	ms, err := srv.Machines(ctx)
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name()
	}
	return out, err
}

func modelNames(ctx context.Context, srv vmfest.Server) ([]string, error) {
	ms, err := srv.Models(ctx)
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out, err
}

func hardwareNames(ctx context.Context, srv vmfest.Server) ([]string, error) {
	return srv.HardwareModels(ctx)
}

func networkNames(ctx context.Context, srv vmfest.Server) ([]string, error) {
	ns, err := srv.Networks(ctx)
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.Name
	}
	return out, err
}

// machineThenVolume completes a machine's name, then a volume's.
func (a *app) machineThenVolume() cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		switch len(args) {
		case 0:
			return a.complete(cmd, machineNames, toComplete, nil), cobra.ShellCompDirectiveNoFileComp
		case 1:
			return a.complete(cmd, volumeNames, toComplete, nil), cobra.ShellCompDirectiveNoFileComp
		}
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
}

// complete returns the names of list that start with toComplete and are
// not in skip (the arguments given already).
func (a *app) complete(cmd *cobra.Command, list names, toComplete string, skip []string) []string {
	srv, err := a.server()
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), completeTimeout)
	defer cancel()
	all, err := list(ctx, srv)
	if err != nil {
		return nil
	}
	var out []string
	for _, n := range all {
		if strings.HasPrefix(n, toComplete) && !slices.Contains(skip, n) {
			out = append(out, n)
		}
	}
	return out
}

// argsOf completes every argument with list's names (NAME...), or only
// the first (NAME) when one is true.
func (a *app) argsOf(list names, one bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if one && len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return a.complete(cmd, list, toComplete, args), cobra.ShellCompDirectiveNoFileComp
	}
}

// flagOf completes a flag's value with list's names, and with file
// names too when the flag also takes a file (--image, --hardware).
func (a *app) flagOf(list names, files bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		dir := cobra.ShellCompDirectiveNoFileComp
		if files {
			dir = cobra.ShellCompDirectiveDefault
		}
		return a.complete(cmd, list, toComplete, nil), dir
	}
}

// addCompletions gives the commands of root's tree their shell
// completion of machine, image model, hardware model and network names,
// read from the local state directory or --server.
func (a *app) addCompletions(root *cobra.Command) {
	args := map[string]cobra.CompletionFunc{
		"start":         a.argsOf(machineNames, false),
		"stop":          a.argsOf(machineNames, false),
		"pause":         a.argsOf(machineNames, false),
		"resume":        a.argsOf(machineNames, false),
		"power-down":    a.argsOf(machineNames, false),
		"destroy":       a.argsOf(machineNames, false),
		"show":          a.argsOf(machineNames, true),
		"console":       a.argsOf(machineNames, true),
		"ip":            a.argsOf(machineNames, true),
		"ssh":           a.argsOf(machineNames, true),
		"ssh-proxy":     a.argsOf(machineNames, true),
		"model show":    a.argsOf(modelNames, true),
		"model rm":      a.argsOf(modelNames, false),
		"hardware show": a.argsOf(hardwareNames, true),
		"hardware rm":   a.argsOf(hardwareNames, true),
		"network rm":    a.argsOf(networkNames, false),
		"volume show":   a.argsOf(volumeNames, true),
		"volume rm":     a.argsOf(volumeNames, false),
		"attach":        a.machineThenVolume(),
		"detach":        a.machineThenVolume(),
	}
	flags := map[string]map[string]cobra.CompletionFunc{
		"create": {
			"image":    a.flagOf(modelNames, true),
			"hardware": a.flagOf(hardwareNames, true),
			"volume":   a.flagOf(volumeNames, false),
		},
		"network create": {
			"kind": cobra.FixedCompletions([]string{"host-only", "internal"}, cobra.ShellCompDirectiveNoFileComp),
		},
	}
	for _, c := range allCommands(root) {
		path := strings.TrimPrefix(strings.TrimPrefix(c.CommandPath(), root.Name()), " ")
		if f, ok := args[path]; ok {
			c.ValidArgsFunction = f
		}
		for flag, f := range flags[path] {
			c.RegisterFlagCompletionFunc(flag, f)
		}
	}
}

// allCommands is cmd and every command under it.
func allCommands(cmd *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{cmd}
	for _, c := range cmd.Commands() {
		out = append(out, allCommands(c)...)
	}
	return out
}
