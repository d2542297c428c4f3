// Command vmfest creates and drives QEMU virtual machines from data: a
// hardware spec and an image spec, or named models of each.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand(os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	var exit interface{ ExitCode() int }
	if errors.As(err, &exit) { // vmfest ssh: the remote command's status
		os.Exit(exit.ExitCode())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmfest: "+oneLine(err.Error()))
		os.Exit(1)
	}
}
