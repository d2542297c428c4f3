// Command vmfest creates and drives QEMU virtual machines from data: a
// hardware spec and an image spec, or named models of each.
package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitStatus(err, os.Stderr))
}

// execute runs the CLI on args.
func execute(ctx context.Context, args []string, out, errOut io.Writer) error {
	root := newRootCommand(out, errOut)
	root.SetArgs(waitValues(args))
	err := root.ExecuteContext(ctx)
	if err == nil {
		return nil
	}
	if asJSON, _ := root.PersistentFlags().GetBool("json"); asJSON || jsonRequested(args) {
		return jsonError{err}
	}
	return err
}

// exitStatus prints err and returns the status vmfest exits with. Only
// the remote command's own status (vmfest ssh's exitError) exits silently
// with that status: any other error prints its message and exits 1, even
// one that wraps a child process's *exec.ExitError (qemu-img's, QEMU's),
// whose ExitCode must not pass for the CLI's. Under --json the message
// is the API's error body on one line: {"error": "...", "code": "..."}.
func exitStatus(err error, errOut io.Writer) int {
	if err == nil {
		return 0
	}
	var remote exitError
	if errors.As(err, &remote) {
		return remote.code
	}
	var asJSON jsonError
	printError(errOut, err, errors.As(err, &asJSON))
	return 1
}
