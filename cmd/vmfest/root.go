package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

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
	// termOut and termErr are out and errOut as given, to tell a
	// terminal (ssh, the progress bar).
	termOut, termErr io.Writer
	// remote and token choose a remote server (--server, --token).
	remote string
	token  string
	// nat, when set (by serve's flags), is the NAT policy of the local
	// server; else it is read from the environment (natPolicyFromEnv).
	nat *spec.NATPolicy
	// warnings prints the Local's log records as "warning: ..." lines,
	// each message once per command.
	warnings *warningHandler
	// driver names the driver of machines this invocation creates
	// (--driver, env VMFEST_DRIVER); others keep the one they were made
	// with.
	driver string
	// pool chooses a pool of hosts instead (--pool, --host; pool.go).
	pool poolFlags
	// homeFlag is --home, to tell whether it was given; system is what
	// chooseSystem found of the system instance (system.go), once.
	homeFlag *pflag.Flag
	system   *systemChoice
}

func newRootCommand(out, errOut io.Writer) *cobra.Command {
	a := &app{out: &lockedWriter{w: out}, errOut: &lockedWriter{w: errOut}, termOut: out, termErr: errOut}
	root := &cobra.Command{
		Use:   "vmfest",
		Short: "Lightweight QEMU virtual machines from data",
		Long:  "vmfest creates QEMU virtual machines in milliseconds as copy-on-write overlays of immutable base images, and drives their lifecycle.",
		// Runnable, so that a mistyped command is reported as the
		// groups' are (unknownSubcommand), its suggestions on lines.
		Args:          cobra.ArbitraryArgs,
		RunE:          unknownSubcommand,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// --version prints what the version command prints.
	root.SetVersionTemplate("vmfest {{.Version}}\n")
	a.warnings = newWarningHandler(a.errOut)
	root.SetOut(a.out)
	root.SetErr(a.errOut)
	root.PersistentFlags().StringVar(&a.home, "home", store.DefaultRoot(), "state directory (env VMFEST_HOME)")
	a.homeFlag = root.PersistentFlags().Lookup("home")
	root.PersistentFlags().BoolVar(&a.json, "json", false, `print JSON: the resulting object(s) of a change, the API's objects; errors as {"error": ..., "code": ...} on stderr`)
	root.PersistentFlags().BoolVarP(&a.verbose, "verbose", "v", false, "log debug messages")
	root.PersistentFlags().StringVar(&a.remote, "server", os.Getenv("VMFEST_SERVER"), "drive the vmfest server at this URL: unix:///path/vmfest.sock, http(s)://host:port (env VMFEST_SERVER)")
	root.PersistentFlags().StringVar(&a.driver, "driver", os.Getenv("VMFEST_DRIVER"), "hypervisor driver of the machines this command creates (or, with serve, the server creates by default): qemu (default) or libvirt (env VMFEST_DRIVER); a machine keeps the driver it was made with")
	root.PersistentFlags().StringVar(&a.token, "token", "", "bearer token of a TCP --server (env VMFEST_TOKEN; default, for a server on a loopback address only: --home's token file)")
	a.addPoolFlags(root)
	root.AddCommand(
		a.createCommand(),
		a.startCommand(),
		a.simpleCommand("pause", "Freeze running machines' CPUs", vmfest.Paused, func(cmd *cobra.Command, m vmfest.Machine) error { return m.Pause(cmd.Context()) }),
		a.simpleCommand("resume", "Continue paused machines", vmfest.Running, func(cmd *cobra.Command, m vmfest.Machine) error { return m.Resume(cmd.Context()) }),
		a.stopCommand(),
		a.saveCommand(),
		a.cloneCommand(),
		a.simpleCommand("power-down", "Pull the plug on machines (hard off)", vmfest.PoweredOff, func(cmd *cobra.Command, m vmfest.Machine) error { return m.PowerDown(cmd.Context()) }),
		a.destroyCommand(),
		a.listCommand(),
		a.labelCommand(),
		a.setCommand(),
		a.resizeCommand(),
		a.execCommand(),
		a.cpCommand(),
		a.inventoryCommand(),
		a.showCommand(),
		a.consoleCommand(),
		a.ipCommand(),
		a.sshCommand(),
		a.sshProxyCommand(),
		a.networkCommand(),
		a.volumeCommand(),
		a.snapshotCommand(),
		a.attachCommand(),
		a.detachCommand(),
		a.hardwareCommand(),
		a.doctorCommand(),
		a.serveCommand(),
		a.poolCommand(),
		&cobra.Command{
			Use:   "version",
			Short: "Print vmfest's version",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				if a.json {
					return a.printJSON(map[string]string{"version": version})
				}
				fmt.Fprintln(a.out, "vmfest", version)
				if line := a.serverLine(); line != "" {
					fmt.Fprintln(a.out, line)
				}
				return nil
			},
		},
	)
	root.AddCommand(a.modelCommands()...)
	root.AddCommand(packageDocsCommand(root))
	markErrors(root)
	a.addCompletions(root)
	return root
}

// server opens the server the commands talk to: the one at --server, else
// (for a user who is not root and named no --home) the system instance
// when its socket is there, else the local one over --home.
func (a *app) server() (vmfest.Server, error) {
	if a.pool.endpoints != "" {
		return a.poolServer()
	}
	if a.remote == "" {
		if c := a.chooseSystem(); c.err != nil {
			return nil, c.err
		} else if c.url != "" {
			a.remote = c.url
		}
	}
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
	var logger *slog.Logger
	if a.verbose {
		logger = slog.New(slog.NewTextHandler(a.errOut, &slog.HandlerOptions{Level: slog.LevelDebug}))
	} else {
		logger = slog.New(a.warnings)
	}
	cfg := vmfest.ConfigFromEnv()
	cfg.Home = a.home
	cfg.Logger = logger
	cfg.DriverName = a.driver
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

// waitValues applies the one rule for every --wait: a duration right after
// it is its value, spaced or with "=" (--wait 30s, --wait=30s). pflag gives
// a flag with a default for its bare form (start's --wait) only its "="
// form, and would take "30s" for a machine name; so "--wait DUR" is joined
// into "--wait=DUR" here, before cobra parses. A bare number is joined too,
// so that "--wait 30" is refused for its missing unit rather than taken
// for a machine. Nothing after "--" (ssh's remote command) is touched.
func waitValues(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			return append(out, args[i:]...)
		}
		if arg == "--wait" && i+1 < len(args) && isDuration(args[i+1]) {
			out = append(out, "--wait="+args[i+1])
			i++
			continue
		}
		out = append(out, arg)
	}
	return out
}

func isDuration(s string) bool {
	if _, err := time.ParseDuration(s); err == nil {
		return true
	}
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}

// unknownSubcommand is the RunE of a command that only groups others
// (the root, network, hardware, model): alone it prints its help; with an
// argument, that argument is a mistyped subcommand, and an error, with
// cobra's suggestions.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default for the root
	}
	return usageError{unknownCommandError{
		arg:         args[0],
		path:        cmd.CommandPath(),
		suggestions: cmd.SuggestionsFor(args[0]),
	}}
}

// unknownCommandError is a mistyped subcommand and what cobra suggests
// instead. Its message is one line (under --json); printError prints the
// suggestions as lines of their own.
type unknownCommandError struct {
	arg, path   string
	suggestions []string
}

func (e unknownCommandError) head() string {
	return fmt.Sprintf("unknown command %q for %q", e.arg, e.path)
}

func (e unknownCommandError) didYouMean() string {
	if len(e.suggestions) == 0 {
		return ""
	}
	q := make([]string, len(e.suggestions))
	for i, s := range e.suggestions {
		q[i] = strconv.Quote(s)
	}
	return "did you mean " + strings.Join(q, " or ") + "?"
}

func (e unknownCommandError) seeHelp() string {
	return fmt.Sprintf("see '%s --help'", e.path)
}

func (e unknownCommandError) Error() string {
	msg := e.head()
	if d := e.didYouMean(); d != "" {
		msg += "; " + d
	}
	return msg + " (" + e.seeHelp() + ")"
}

// lines is the message as printError prints it without --json.
func (e unknownCommandError) lines() []string {
	out := []string{e.head()}
	if d := e.didYouMean(); d != "" {
		out = append(out, d)
	}
	return append(out, e.seeHelp())
}
