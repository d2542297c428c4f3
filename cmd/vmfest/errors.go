package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// usageError is a mistake in the command line itself (an unknown command
// or flag, a missing argument, a value the CLI refuses before asking the
// server): code "invalid" under --json.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// ranError marks an error returned by a command's RunE, as opposed to
// one cobra returned while parsing the command line (a usageError).
type ranError struct{ err error }

func (e ranError) Error() string { return e.err.Error() }
func (e ranError) Unwrap() error { return e.err }

// jsonError marks the error of a run with --json: exitStatus prints it
// as the API's error body, {"error": "...", "code": "..."}.
type jsonError struct{ err error }

func (e jsonError) Error() string { return e.err.Error() }
func (e jsonError) Unwrap() error { return e.err }

// markErrors makes every error of cmd's tree tell where it came from:
// cobra's argument and flag checks give usageErrors, RunE ranErrors.
func markErrors(cmd *cobra.Command) {
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	if args := cmd.Args; args != nil {
		cmd.Args = func(c *cobra.Command, a []string) error {
			if err := args(c, a); err != nil {
				return usageError{err}
			}
			return nil
		}
	}
	if run := cmd.RunE; run != nil {
		cmd.RunE = func(c *cobra.Command, a []string) error {
			if err := run(c, a); err != nil {
				return ranError{err}
			}
			return nil
		}
	}
	for _, c := range cmd.Commands() {
		markErrors(c)
	}
}

// errorBody is err as the API gives it: its message on one line and the
// code of the vmfest error it wraps (docs/api.md, "Errors"). An error
// cobra returned before any command ran is a usage error ("invalid").
func errorBody(err error) wire.Error {
	body := wire.Error{Error: oneLine(err.Error()), Code: errorCode(err)}
	var se *vmfest.StateError
	if errors.As(err, &se) {
		body.Machine, body.Op, body.State = se.Machine, se.Op, string(se.State)
		for _, n := range se.Needs {
			body.Needs = append(body.Needs, string(n))
		}
	}
	return body
}

func errorCode(err error) string {
	var usage usageError
	var ran ranError
	switch {
	case errors.As(err, &usage):
		return wire.CodeInvalid
	case errors.Is(err, vmfest.ErrWrongState):
		return wire.CodeWrongState
	case errors.Is(err, vmfest.ErrExists):
		return wire.CodeExists
	case errors.Is(err, vmfest.ErrNotFound), errors.Is(err, model.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return wire.CodeNotFound
	case errors.Is(err, vmfest.ErrInvalid), errors.Is(err, spec.ErrInvalid), errors.Is(err, store.ErrInvalidName):
		return wire.CodeInvalid
	case errors.Is(err, vmfest.ErrUnavailable):
		return wire.CodeUnavailable
	case errors.Is(err, vmfest.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return wire.CodeTimeout
	case errors.Is(err, context.Canceled):
		return wire.CodeCanceled
	case errors.Is(err, errors.ErrUnsupported):
		return wire.CodeUnsupported
	case errors.Is(err, fs.ErrPermission):
		return wire.CodeForbidden
	case !errors.As(err, &ran):
		// cobra's own: an unknown command, before any RunE ran.
		return wire.CodeInvalid
	}
	return wire.CodeInternal
}

// failures is the error of a command given several names when some of
// them failed: it names each with its cause. It wraps every cause, so
// errors.Is and errorCode see them.
type failures struct {
	what  string // "machines", "networks", ...
	total int
	names []string
	errs  []error
}

func (f failures) head() string {
	return fmt.Sprintf("%d of %d %s failed", len(f.errs), f.total, f.what)
}

// causes are "NAME: message", one a failed name.
func (f failures) causes() []string {
	out := make([]string, len(f.errs))
	for i, err := range f.errs {
		out[i] = f.names[i] + ": " + oneLine(err.Error())
	}
	return out
}

func (f failures) Error() string   { return f.head() + ": " + strings.Join(f.causes(), "; ") }
func (f failures) Unwrap() []error { return f.errs }

// printError prints err on w: "vmfest: message", or with asJSON the
// API's error body on one line. Two errors print as several lines: a
// mistyped command's suggestions follow it, and failures print one line
// a failed name with its cause (under --json, one error body each, then
// the summary naming them).
func printError(w io.Writer, err error, asJSON bool) {
	var f failures
	isFailures := errors.As(err, &f)
	if !asJSON {
		var unknown unknownCommandError
		switch {
		case isFailures:
			lines := []string{"vmfest: " + f.head() + ":"}
			for _, c := range f.causes() {
				lines = append(lines, "  "+c)
			}
			io.WriteString(w, strings.Join(lines, "\n")+"\n")
		case errors.As(err, &unknown):
			io.WriteString(w, "vmfest: "+strings.Join(unknown.lines(), "\n  ")+"\n")
		default:
			io.WriteString(w, "vmfest: "+oneLine(err.Error())+"\n")
		}
		return
	}
	if !isFailures {
		writeJSONLine(w, errorBody(err))
		return
	}
	for _, e := range f.errs {
		writeJSONLine(w, errorBody(e))
	}
	writeJSONLine(w, wire.Error{Error: f.head() + ": " + strings.Join(f.names, ", "), Code: errorCode(err)})
}

func writeJSONLine(w io.Writer, body wire.Error) {
	data, err := json.Marshal(body)
	if err != nil {
		data = []byte(`{"error":"encode the error","code":"internal"}`)
	}
	w.Write(append(data, '\n'))
}

// jsonRequested reports whether --json is among args (before "--", after
// which the words are ssh's remote command), for errors cobra returns
// before it has parsed the flags.
func jsonRequested(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if a == "--json" || a == "--json=true" {
			return true
		}
	}
	return false
}
