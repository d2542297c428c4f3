// Package vmfest turns a Linux host's QEMU into a lightweight cloud
// provider: machines are described as data (a hardware spec and an image
// spec, or named models of each), created in milliseconds as copy-on-write
// overlays of immutable base images, and driven through their whole
// lifecycle — start, pause, resume, stop, power-down, destroy.
//
// A Server is where machines live. Local is the in-process server over a
// state directory ($VMFEST_HOME, default ~/.vmfest); every QEMU it starts is
// detached, so machines outlive the process that started them and any later
// process reads their true state back from the pidfile and QMP.
//
// The lower-level QEMU driver (command line from a resolved spec, QMP and
// guest-agent clients) is importable on its own as package
// github.com/vmfest/vmfest/driver/qemu.
package vmfest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/spec"
)

// State is a machine's run state: powered-off, running, paused, stopping or
// aborted (QEMU died without a clean power-off).
type State = qemu.State

// The machine states.
const (
	PoweredOff = qemu.PoweredOff
	Running    = qemu.Running
	Paused     = qemu.Paused
	Stopping   = qemu.Stopping
	Aborted    = qemu.Aborted
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
	// ErrInvalid: bad input (a spec, a name, an option).
	ErrInvalid = spec.ErrInvalid
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

// Image chooses a machine's image: an installed image model by id, or a
// full image spec.
type Image struct {
	Model string
	Spec  *spec.Image
}

// ImageModel chooses the installed image model id.
func ImageModel(id string) Image { return Image{Model: id} }

// ImageSpec chooses an image by its spec.
func ImageSpec(s spec.Image) Image { return Image{Spec: &s} }

// Hardware chooses a machine's hardware: a hardware model by name, or a
// full hardware spec.
type Hardware struct {
	Model string
	Spec  *spec.Hardware
}

// HardwareModel chooses the named hardware model (micro, small, ... or a
// user's model).
func HardwareModel(name string) Hardware { return Hardware{Model: name} }

// HardwareSpec chooses hardware by its spec; unset fields get defaults.
func HardwareSpec(h spec.Hardware) Hardware { return Hardware{Spec: &h} }

// Server is where machines live: Local in this process, or a remote host.
// Its methods are safe for concurrent use.
type Server interface {
	// Instance creates a powered-off machine named name from an image and
	// a hardware choice. For an immutable image the machine's disk is a
	// copy-on-write overlay backed by it (the image is never written); a
	// mutable image is attached directly and deleted with the machine.
	// Creation is atomic: on error nothing is left behind.
	Instance(ctx context.Context, name string, image Image, hardware Hardware) (Machine, error)
	// FindMachine returns the named machine or an error wrapping ErrNotFound.
	FindMachine(ctx context.Context, name string) (Machine, error)
	// Machines lists every machine, sorted by name.
	Machines(ctx context.Context) ([]Machine, error)
	// HardwareModels lists the hardware model names.
	HardwareModels(ctx context.Context) ([]string, error)
	// HardwareModel returns one hardware model with defaults applied.
	HardwareModel(ctx context.Context, name string) (spec.Hardware, error)
}

// Machine is one virtual machine. Its methods are safe for concurrent use
// and from several processes at once: operations on one machine are
// serialised by a lock, operations on different machines run in parallel.
// ctx bounds each call, never the machine's life. An operation refused for
// the machine's state returns a *StateError and changes nothing.
type Machine interface {
	// Name is the machine's name.
	Name() string
	// Start boots a powered-off or aborted machine and returns once QEMU
	// runs (not when the guest is ready: see WaitReady).
	Start(ctx context.Context) error
	// Pause freezes a running machine's CPUs.
	Pause(ctx context.Context) error
	// Resume continues a paused machine.
	Resume(ctx context.Context) error
	// Stop presses the ACPI power button and waits until the guest powers
	// off, bounded by ctx (DefaultStopTimeout when ctx has no deadline).
	// On timeout the machine is left running and the error wraps ErrTimeout.
	Stop(ctx context.Context) error
	// PowerDown pulls the plug: QEMU ends at once, the guest gets no
	// chance to shut down.
	PowerDown(ctx context.Context) error
	// Destroy removes a powered-off or aborted machine and its overlay (and
	// its disk when the image is not immutable).
	Destroy(ctx context.Context) error
	// State reports the run state, read from the pidfile and QMP.
	State(ctx context.Context) (State, error)
	// Info reports the machine's description and state.
	Info(ctx context.Context) (Info, error)
	// WaitReady waits until the guest agent answers, bounded by ctx.
	WaitReady(ctx context.Context) error
	// ConsoleLog returns the serial console output of the current or last run.
	ConsoleLog(ctx context.Context) ([]byte, error)
}

// DefaultStopTimeout bounds Stop when its context has no deadline.
const DefaultStopTimeout = 60 * time.Second

// Info describes a machine.
type Info struct {
	Name  string `json:"name"`
	State State  `json:"state"`
	// Image is the image model id, or the image's location when the
	// machine was made from a spec.
	Image string `json:"image"`
	// Hardware is the hardware model name, or "custom".
	Hardware string `json:"hardware"`
	// Accel is the accelerator of the current or last run (kvm or tcg).
	Accel string `json:"accel,omitempty"`
	// PID is QEMU's process id while it runs.
	PID int `json:"pid,omitempty"`
	// Disk is the machine's disk: its overlay, or the image itself when
	// that is not immutable.
	Disk string `json:"disk"`
	// BaseImage is the immutable image backing the overlay, if any.
	BaseImage string `json:"base-image,omitempty"`
	// Created is when the machine was made.
	Created time.Time `json:"created"`
	// SerialLog is the path of the serial console log.
	SerialLog string `json:"serial-log,omitempty"`
	// HardwareSpec and ImageSpec are the resolved specs the machine runs.
	HardwareSpec spec.Hardware `json:"hardware-spec"`
	ImageSpec    spec.Image    `json:"image-spec"`
}
