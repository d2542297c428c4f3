// Package wire holds the JSON shapes that travel between `vmfest serve`
// (package api) and its client (vmfest.Remote). It sits below both: it
// imports only the spec and model packages, so the root package can use it
// without importing the HTTP server.
package wire

import (
	"encoding/json"
	"time"

	"github.com/vmfest/vmfest/spec"
)

// Prefix is the path prefix of every versioned endpoint.
const Prefix = "/v1"

// MaxBody is the largest request body the server reads (1 MiB): specs are
// small, so anything bigger is refused with 413 before it is decoded.
const MaxBody = 1 << 20

// Error codes: the "code" of an error body. Clients map them back to the
// vmfest error values (vmfest.ErrNotFound and so on).
const (
	CodeInvalid      = "invalid"      // 400: bad input
	CodeUnauthorized = "unauthorized" // 401: no or wrong bearer token
	CodeForbidden    = "forbidden"    // 403: a path outside the allowed directories
	CodeNotFound     = "not-found"    // 404
	CodeExists       = "exists"       // 409: the name is taken
	CodeWrongState   = "wrong-state"  // 409: the machine's state refuses the operation
	CodeTooLarge     = "too-large"    // 413: the body is over MaxBody
	CodeTimeout      = "timeout"      // 504, or an operation's error
	CodeCanceled     = "canceled"     // an operation canceled, or the server shutting down
	CodeUnsupported  = "unsupported"  // 501: the server cannot do this (yet)
	CodeInternal     = "internal"     // 500
	CodeUnavailable  = "unavailable"  // 503: the server is shutting down
)

// Error is the body of every error response, and an operation's error.
type Error struct {
	// Error is the message, worded for the user.
	Error string `json:"error"`
	// Code is one of the Code constants.
	Code string `json:"code"`
	// Machine, Op, State and Needs describe a wrong-state error, so that a
	// client can rebuild a *vmfest.StateError.
	Machine string   `json:"machine,omitempty"`
	Op      string   `json:"op,omitempty"`
	State   string   `json:"state,omitempty"`
	Needs   []string `json:"needs,omitempty"`
}

// ImageChoice names an image model or gives a full image spec (exactly
// one of them).
type ImageChoice struct {
	Model string      `json:"model,omitempty"`
	Spec  *spec.Image `json:"spec,omitempty"`
	// SSHKeys are OpenSSH public keys that may log in beside vmfest's own
	// (a cloud-init image's seed).
	SSHKeys []string `json:"ssh-keys,omitempty"`
}

// HardwareChoice names a hardware model or gives a full spec.
type HardwareChoice struct {
	Model string         `json:"model,omitempty"`
	Spec  *spec.Hardware `json:"spec,omitempty"`
}

// CreateMachine is the body of POST /v1/machines.
type CreateMachine struct {
	Name     string         `json:"name"`
	Image    ImageChoice    `json:"image"`
	Hardware HardwareChoice `json:"hardware"`
	// Labels are the machine's labels.
	Labels map[string]string `json:"labels,omitempty"`
	// UserData is a cloud-init user-data, as text.
	UserData *string `json:"user-data,omitempty"`
	// Driver names the driver to run the machine (default: the server's).
	Driver string `json:"driver,omitempty"`
	// Attach are volumes, disks and ISOs to put in its storage slots.
	Attach []Attachment `json:"attach,omitempty"`
}

// Change is the body of PATCH /v1/machines/{name}: what changes of a
// powered-off machine (zero fields change nothing).
type Change struct {
	Hardware   *HardwareChoice `json:"hardware,omitempty"`
	MemorySize int             `json:"memory-size,omitempty"`
	CPUCount   int             `json:"cpu-count,omitempty"`
	DiskSize   spec.Size       `json:"disk-size,omitempty"`
}

// Relabel is the body of POST /v1/machines/{name}/labels.
type Relabel struct {
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// SetupModel is the body of POST /v1/models.
type SetupModel struct {
	// Source is an http(s) URL, or a path on the server inside an allowed
	// directory.
	Source string      `json:"source"`
	ID     string      `json:"id,omitempty"`
	SHA256 string      `json:"sha256,omitempty"`
	Meta   *spec.Image `json:"meta,omitempty"`
	// Overrides are laid over the metadata field by field.
	Overrides *spec.Image `json:"overrides,omitempty"`
	Replace   bool        `json:"replace,omitempty"`
}

// State is the body of GET /v1/machines/{name}/state and of the answers to
// synchronous actions.
type State struct {
	State string `json:"state"`
}

// Progress is how far an operation has got.
type Progress struct {
	Phase string `json:"phase"`
	Done  int64  `json:"done"`
	Total int64  `json:"total,omitempty"`
}

// Operation statuses.
const (
	Running   = "running"
	Succeeded = "succeeded"
	Failed    = "failed"
	Canceled  = "canceled"
)

// Operation kinds.
const (
	OpSetupModel = "setup-model"
	OpStart      = "start"
	OpStop       = "stop"
	OpWaitReady  = "wait-ready"
)

// Operation is long work the server runs on its own: the answer (202) to
// setup-model, stop, start with ?wait= and wait-ready.
type Operation struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"`
	Target string `json:"target,omitempty"`
	// Status is running, succeeded, failed or canceled.
	Status   string          `json:"status"`
	Progress *Progress       `json:"progress,omitempty"`
	Error    *Error          `json:"error,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Started  time.Time       `json:"started"`
	Finished *time.Time      `json:"finished,omitempty"`
}

// Done reports whether the operation has finished.
func (o Operation) Done() bool { return o.Status != Running }

// Event types on GET /v1/events.
const (
	EventMachine   = "machine"
	EventOperation = "operation"
)

// Event is one server-sent event: a machine's lifecycle step done through
// this server, or an operation's progress or end.
type Event struct {
	Type string    `json:"type"`
	Time time.Time `json:"time"`
	// Machine and Action are set for machine events (created, started,
	// paused, resumed, stopped, powered-down, destroyed).
	Machine string `json:"machine,omitempty"`
	Action  string `json:"action,omitempty"`
	// Operation is set for operation events.
	Operation *Operation `json:"operation,omitempty"`
}

// Attachment is a volume, a disk or an ISO in a machine's storage slot:
// the body of POST /v1/machines/{name}/attach and /detach, and an entry of
// CreateMachine's attach list.
type Attachment struct {
	Volume string           `json:"volume,omitempty"`
	Disk   string           `json:"disk,omitempty"`
	ISO    string           `json:"iso,omitempty"`
	Slot   *spec.MountPoint `json:"slot,omitempty"`
}

// Attached answers attach and detach: the slot acted on.
type Attached struct {
	Slot spec.MountPoint `json:"slot"`
}
