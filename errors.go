package vmfest

import (
	"errors"
	"fmt"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Errors callers can test for with errors.Is.
var (
	// ErrNotFound: no machine or model of that name.
	ErrNotFound = errors.New("not found")
	// ErrExists: the name is taken.
	ErrExists = errors.New("already exists")
	// ErrWrongState: the machine is not in a state the operation accepts.
	ErrWrongState = errors.New("wrong state")
	// ErrTimeout: the operation did not finish in the time allowed.
	ErrTimeout = errors.New("timed out")
	// ErrInvalid: bad input (a spec, a name, an option). An error about a
	// spec also wraps spec.ErrInvalid.
	ErrInvalid = errors.New("invalid")
	// ErrUnavailable: the host cannot do it now (memory or disk space
	// short, a cap on concurrent work reached); the same call may work
	// later.
	ErrUnavailable = errors.New("unavailable")
	// ErrUnsupported: the machine's driver cannot do it (see
	// driver.Features); the error says why. It also matches
	// errors.ErrUnsupported.
	ErrUnsupported = driver.ErrUnsupported
)

// StateError reports an operation refused because of the machine's state.
type StateError struct {
	Machine string
	Op      string
	State   State
	Needs   []State
}

func (e *StateError) Error() string {
	needs := ""
	for i, s := range e.Needs {
		if i > 0 {
			needs += " or "
		}
		needs += string(s)
	}
	return fmt.Sprintf("cannot %s machine %q: it is %s (%s needs %s)", e.Op, e.Machine, e.State, e.Op, needs)
}

// Unwrap makes errors.Is(err, ErrWrongState) true.
func (e *StateError) Unwrap() error { return ErrWrongState }

// lowerErrors maps the lower layers' sentinels onto the API's.
var lowerErrors = []struct{ from, to error }{
	{spec.ErrInvalid, ErrInvalid},
	{store.ErrInvalidName, ErrInvalid},
	{model.ErrNotFound, ErrNotFound},
	{model.ErrExists, ErrExists},
	{model.ErrBuiltin, ErrInvalid},
	{network.ErrNotFound, ErrNotFound},
	{network.ErrExists, ErrExists},
	{network.ErrInUse, ErrWrongState},
	{network.ErrInvalid, ErrInvalid},
	{network.ErrFull, ErrUnavailable},
}

// apiError is the one way an error of a lower layer (spec, store, model,
// network) becomes the API's: worded as the lower layer worded it (no
// label repeated), and also matching the API's sentinel with errors.Is.
// Other errors are returned as they are.
func apiError(err error) error {
	if err == nil {
		return nil
	}
	for _, m := range lowerErrors {
		if errors.Is(err, m.from) && !errors.Is(err, m.to) {
			return tagged{err, m.to}
		}
	}
	return err
}

// tagged is err, worded as err, that also matches sentinel with errors.Is.
type tagged struct{ err, sentinel error }

func (t tagged) Error() string   { return t.err.Error() }
func (t tagged) Unwrap() []error { return []error{t.err, t.sentinel} }
