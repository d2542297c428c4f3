package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// app holds what every command shares: global flags and output streams.
type app struct {
	home    string
	json    bool
	verbose bool
	out     io.Writer
	errOut  io.Writer
	// remote and token choose a remote server (--server, --token).
	remote string
	token  string
	// nat, when set (by serve's flags), is the NAT policy of the local
	// server; else it is read from the environment (natPolicyFromEnv).
	nat *spec.NATPolicy
}

func newRootCommand(out, errOut io.Writer) *cobra.Command {
	a := &app{out: out, errOut: errOut}
	root := &cobra.Command{
		Use:           "vmfest",
		Short:         "Lightweight QEMU virtual machines from data",
		Long:          "vmfest creates QEMU virtual machines in milliseconds as copy-on-write overlays of immutable base images, and drives their lifecycle.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.home, "home", store.DefaultRoot(), "state directory (env VMFEST_HOME)")
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print JSON")
	root.PersistentFlags().BoolVarP(&a.verbose, "verbose", "v", false, "log debug messages")
	root.PersistentFlags().StringVar(&a.remote, "server", os.Getenv("VMFEST_SERVER"), "drive the vmfest server at this URL: unix:///path/vmfest.sock, http(s)://host:port (env VMFEST_SERVER)")
	root.PersistentFlags().StringVar(&a.token, "token", "", "bearer token of a TCP --server (env VMFEST_TOKEN; default, for a server on a loopback address only: --home's token file)")
	root.AddCommand(
		a.createCommand(),
		a.startCommand(),
		a.simpleCommand("pause", "Freeze running machines' CPUs", func(cmd *cobra.Command, m vmfest.Machine) error { return m.Pause(cmd.Context()) }),
		a.simpleCommand("resume", "Continue paused machines", func(cmd *cobra.Command, m vmfest.Machine) error { return m.Resume(cmd.Context()) }),
		a.stopCommand(),
		a.simpleCommand("power-down", "Pull the plug on machines (hard off)", func(cmd *cobra.Command, m vmfest.Machine) error { return m.PowerDown(cmd.Context()) }),
		a.destroyCommand(),
		a.listCommand(),
		a.showCommand(),
		a.consoleCommand(),
		a.ipCommand(),
		a.sshCommand(),
		a.networkCommand(),
		a.hardwareCommand(),
		a.doctorCommand(),
		a.serveCommand(),
		&cobra.Command{
			Use:   "version",
			Short: "Print vmfest's version",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				if a.json {
					return a.printJSON(map[string]string{"version": version})
				}
				fmt.Fprintln(a.out, "vmfest", version)
				return nil
			},
		},
	)
	root.AddCommand(a.modelCommands()...)
	return root
}

// server opens the server the commands talk to: the one at --server, else
// the local one over --home.
func (a *app) server() (vmfest.Server, error) {
	if a.remote == "" {
		l, err := a.local()
		if err != nil {
			return nil, err
		}
		return l, nil
	}
	return a.connect()
}

// findMachine opens the server and finds the named machine on it.
func (a *app) findMachine(ctx context.Context, name string) (vmfest.Machine, error) {
	srv, err := a.server()
	if err != nil {
		return nil, err
	}
	return srv.FindMachine(ctx, name)
}

// local opens the local server over --home, with the operator's NAT
// policy (serve's flags, else VMFEST_NAT_ALLOW and VMFEST_NAT_LOW_PORTS).
func (a *app) local() (*vmfest.Local, error) {
	level := slog.LevelWarn
	if a.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(a.errOut, &slog.HandlerOptions{Level: level}))
	cfg := vmfest.ConfigFromEnv()
	cfg.Home = a.home
	cfg.Logger = logger
	if a.nat != nil {
		cfg.NAT = *a.nat
	} else {
		nat, err := natPolicyFromEnv()
		if err != nil {
			return nil, err
		}
		cfg.NAT = nat
	}
	return vmfest.NewLocal(cfg)
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// oneLine folds an error message onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}
