// Package driver is the seam between vmfest's orchestration (package
// vmfest: records, disks, networks, locks) and a hypervisor. A Driver runs
// one machine at a time from a resolved spec and reports what it does; it
// never decides names, allocates addresses or touches the state directory
// outside the machine directory it is given.
//
// Implementations: driver/qemu (QEMU run directly, the default),
// driver/libvirt (QEMU through libvirtd) and driver/fake (in memory, for
// unit tests). A Server gets its driver through its configuration; there is
// no registry.
//
// Every method takes the Machine it acts on: its name, its directory (where
// a driver keeps its own files: sockets, pidfile, console log, domain XML)
// and its instance id. Methods are safe for concurrent use on different
// machines; vmfest serialises the calls on one machine with its lock, except
// Status, Console, WaitExit and Agent, which may run at any time.
//
// What a driver can do is in its Features, so the orchestration asks rather
// than assumes; an operation a driver cannot do returns an error wrapping
// ErrUnsupported that says why.
package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vmfest/vmfest/spec"
)

// ErrUnsupported is wrapped by an error for an operation the driver cannot
// do (see Features). It matches errors.ErrUnsupported too.
var ErrUnsupported error = unsupported{}

type unsupported struct{}

func (unsupported) Error() string        { return "not supported by this driver" }
func (unsupported) Is(target error) bool { return target == errors.ErrUnsupported }

// State is a machine's run state as its hypervisor reports it.
type State string

// The run states.
const (
	// PoweredOff: nothing runs for the machine and the last run ended cleanly.
	PoweredOff State = "powered-off"
	// Running: the guest runs.
	Running State = "running"
	// Paused: the hypervisor runs but the guest's CPUs are stopped.
	Paused State = "paused"
	// Stopping: the guest was asked to power off and is shutting down.
	Stopping State = "stopping"
	// Aborted: the hypervisor died without a clean power-off (killed or
	// crashed), or the guest hit an error it cannot continue from.
	Aborted State = "aborted"
	// Saved: the machine's memory and device state are on disk (see
	// Saver). A driver reports it for a hypervisor that holds a machine
	// whose state it has just written out or is reading back in; vmfest
	// reports it too for a machine whose saved-state file is there and
	// whose hypervisor is not running.
	Saved State = "saved"
)

// Features says what a driver can do.
type Features struct {
	// DiskFormats are the disk formats it opens (qcow2, raw).
	DiskFormats []string `json:"disk-formats"`
	// BackingChain: it opens a qcow2 overlay over a read-only base with
	// the chain given (the base's format spelled out, nothing probed).
	BackingChain bool `json:"backing-chain"`
	// UserNAT: attachment-type nat, user-mode networking with host port
	// forwards (the SSH forward and nat-rules).
	UserNAT bool `json:"user-nat"`
	// Taps: host-only, internal and bridged NICs on host taps of the names
	// vmfest gives (vmfest plugs them into their bridges).
	Taps bool `json:"taps"`
	// Pause: the guest's CPUs can be stopped and continued.
	Pause bool `json:"pause"`
	// PowerButton: an ACPI power button press.
	PowerButton bool `json:"power-button"`
	// GuestAgent: commands to the QEMU guest agent in the guest.
	GuestAgent bool `json:"guest-agent"`
	// Console: the serial console is kept in the machine directory.
	Console bool `json:"console"`
	// MemorySnapshots: a running machine's memory and device state can be
	// saved and restored (saved state, snapshots, clones).
	MemorySnapshots bool `json:"memory-snapshots"`
}

// HasDiskFormat says whether the driver opens disks of format f.
func (f Features) HasDiskFormat(format string) bool { return slices.Contains(f.DiskFormats, format) }

// Info describes a driver.
type Info struct {
	// Name is how machine records and configuration name the driver
	// (qemu, libvirt, fake).
	Name     string   `json:"name"`
	Features Features `json:"features"`
}

// Machine identifies the machine a call acts on.
type Machine struct {
	// Name is the machine's name.
	Name string
	// Dir is the machine's directory (absolute); the driver keeps its own
	// files there.
	Dir string
	// ID is the machine's instance id: unique among every machine vmfest
	// ever made, stable for the machine's life.
	ID string
}

// Disk is the boot disk, opened with every format given and its chain
// spelled out: nothing is probed, and no file named inside an image (a
// backing file, a backing format) is opened.
type Disk struct {
	// Path is the image file (absolute).
	Path string
	// Format is qcow2 or raw.
	Format string
	// BackingPath, when set, is the read-only base of a qcow2 overlay at
	// Path (absolute); it is opened with BackingFormat and no backing file
	// of its own, whatever its header says.
	BackingPath string
	// BackingFormat is the base's format, qcow2 or raw.
	BackingFormat string
}

// Validate checks what the hypervisor will be told about the disk.
func (d Disk) Validate() error {
	if d.Format != spec.DiskFormatQCOW2 && d.Format != spec.DiskFormatRaw {
		return fmt.Errorf("disk format %q: allowed: qcow2, raw", d.Format)
	}
	if !isAbs(d.Path) {
		return fmt.Errorf("disk path %q: must be an absolute path", d.Path)
	}
	if d.BackingPath == "" && d.BackingFormat == "" {
		return nil
	}
	if d.BackingFormat != spec.DiskFormatQCOW2 && d.BackingFormat != spec.DiskFormatRaw {
		return fmt.Errorf("disk backing format %q: allowed: qcow2, raw", d.BackingFormat)
	}
	if !isAbs(d.BackingPath) {
		return fmt.Errorf("disk backing path %q: must be an absolute path", d.BackingPath)
	}
	if d.Format != spec.DiskFormatQCOW2 {
		return fmt.Errorf("disk %s: only a qcow2 disk has a backing file, not a %s one", d.Path, d.Format)
	}
	return nil
}

func isAbs(p string) bool { return len(p) > 0 && p[0] == '/' }

// NIC is what vmfest prepared on the host for one NIC (indexed by slot like
// the hardware's network list).
type NIC struct {
	// Tap is the host tap the NIC is on (host-only, internal, bridged):
	// the driver has the hypervisor create it under this name; vmfest
	// plugs it into its bridge once Start returns.
	Tap string
	// SSHPort is, for a nat NIC, the free port on 127.0.0.1 forwarded to
	// the guest's port 22.
	SSHPort int
}

// Drive is the file in a storage slot other than the boot mount point: a
// volume or a user's disk in a hard-disk slot (opened read-write), an ISO
// in a dvd slot (read-only).
type Drive struct {
	// Controller and Slot say where: a controller of Hardware.Storage by
	// name and its slot.
	Controller string
	Slot       int
	// Disk is the file, its format given; an ISO is raw.
	Disk Disk
}

// StartSpec is everything a driver needs to start a machine.
type StartSpec struct {
	Machine
	// Hardware is the resolved hardware spec (defaults applied, MACs set).
	Hardware spec.Hardware
	// Disk is the boot disk.
	Disk Disk
	// Drives are the files in the other slots, one per slot whose device
	// has a location or a volume. A dvd slot without one is an empty
	// drive (the first empty one holds the Seed).
	Drives []Drive
	// NICs are indexed by slot, one per Hardware.Network entry.
	NICs []NIC
	// Seed, when set, is a cloud-init NoCloud ISO to attach read-only.
	Seed string
	// Incoming, when set, is a file Saver.Save wrote: the machine resumes
	// from it instead of booting, with the same hardware, disks and NICs
	// it was saved with. Start then returns once the whole state is read
	// back, the guest's CPUs still stopped (Started.Restored says in which
	// state it was saved); the file is not changed or removed.
	Incoming string
	// MemoryTemplate, when set with Incoming, is the RAM file of a memory
	// template (Templater) and Incoming its device state: the guest's RAM
	// is a private, copy-on-write mapping of the file, so machines started
	// from one template share its pages until each writes them. The file
	// is never written, and may be unlinked once Start returns.
	MemoryTemplate string
	// Snapshot, when set, names an internal snapshot of Disk holding
	// memory (see Snapshotter): the machine starts from it, running where
	// it was when the snapshot was taken, instead of booting.
	Snapshot string
	// GenID, when set, is the machine's VM generation ID (a GUID,
	// 8-4-4-4-12 hex): the hypervisor gives the guest a vmgenid device
	// holding it, and writes it into the guest again when the machine
	// resumes from Incoming, so a clone's guest sees a new one. Empty: no
	// such device (a machine of an older vmfest, whose saved state was
	// written without it).
	GenID string
}

// ValidGenID says whether s is a GUID as StartSpec.GenID takes it.
func ValidGenID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// Drive returns the file in the given slot, if the spec gives one.
func (s StartSpec) Drive(controller string, slot int) (Drive, bool) {
	for _, d := range s.Drives {
		if d.Controller == controller && d.Slot == slot {
			return d, true
		}
	}
	return Drive{}, false
}

// Started reports a start.
type Started struct {
	// Accel is the accelerator the machine runs on: kvm or tcg.
	Accel string
	// Restored, for a start from StartSpec.Incoming, is the state the
	// machine was saved in (Running or Paused); the guest is held stopped
	// until Resume. Empty for a boot.
	Restored State
}

// Status is a machine's run state, derived afresh on every call.
type Status struct {
	State State
	// PID is the hypervisor process running the machine, 0 when none.
	PID int
	// Since is when the current run began (zero when powered off).
	Since time.Time
}

// Lifecycle runs a machine. Start, Pause, Resume, PowerButton, PowerOff,
// Kill and Clean are called with the machine's lock held; Status and
// WaitExit may be called at any time.
type Lifecycle interface {
	// Start boots the machine and returns once it runs (not once the guest
	// is ready). ctx bounds the launch, never the machine's life. The
	// machine must be powered off and Clean.
	Start(ctx context.Context, s StartSpec) (Started, error)
	// Status reports the run state.
	Status(ctx context.Context, m Machine) (Status, error)
	// Pause stops the guest's CPUs.
	Pause(ctx context.Context, m Machine) error
	// Resume continues a paused guest.
	Resume(ctx context.Context, m Machine) error
	// PowerButton presses the ACPI power button and returns; the guest
	// decides when (and whether) it powers off.
	PowerButton(ctx context.Context, m Machine) error
	// PowerOff ends the machine at once, as pulling the plug, and returns
	// once its hypervisor has exited. The console's last output is kept.
	PowerOff(ctx context.Context, m Machine) error
	// Kill ends the hypervisor process without any courtesy (an undo after
	// a failed start); it does not wait.
	Kill(ctx context.Context, m Machine) error
	// WaitExit waits until the machine's hypervisor has exited, bounded by
	// ctx.
	WaitExit(ctx context.Context, m Machine) error
	// Clean removes what the last run left (pidfile, sockets, a dead
	// domain's runtime state), waiting for a killed hypervisor to finish
	// exiting. It refuses while the machine runs. Safe to repeat.
	Clean(ctx context.Context, m Machine) error
	// Forget removes whatever the driver keeps of the machine outside its
	// directory (a libvirt domain definition), when the machine is
	// destroyed. Safe to repeat; the machine is powered off.
	Forget(ctx context.Context, m Machine) error
}

// Console reads a machine's serial console.
type Console interface {
	// Console returns the serial console output of the current or last
	// run (bounded; the oldest output goes first).
	Console(ctx context.Context, m Machine) ([]byte, error)
}

// Agent is a connection to the QEMU guest agent in a running guest.
type Agent interface {
	// Execute runs a guest-agent command and returns its "return" value.
	Execute(ctx context.Context, command string, args any) (json.RawMessage, error)
	// Close releases the connection.
	Close() error
}

// GuestAgent reaches the guest agent.
type GuestAgent interface {
	// Agent connects to the machine's guest agent and synchronises with
	// it, retrying until the agent answers or ctx is done: a returned Agent
	// has a live agent on the other end.
	Agent(ctx context.Context, m Machine) (Agent, error)
}

// Saver is a driver that writes a machine's memory and device state to a
// file and later resumes the machine from it (StartSpec.Incoming);
// announced by Features.MemorySnapshots. Called with the machine's lock
// held.
type Saver interface {
	// Save writes the running or paused machine's state to a new file at
	// path (which must not exist), synced to disk, in a format of the
	// driver's own. It returns with the hypervisor still alive and holding
	// the machine stopped (Status: Saved) until PowerOff or Kill, so the
	// caller can commit the file first. On error the file is removed and
	// the machine runs on (or stays paused) as it was. ctx bounds the save.
	Save(ctx context.Context, m Machine, path string) error
}

// Templater is a Saver that turns a saved state into a memory template:
// the guest's RAM in a plain file (ram) and the rest of its state in a
// small file of its own (state), which StartSpec.MemoryTemplate and
// StartSpec.Incoming take. Called with the saved machine's lock held.
type Templater interface {
	// Template loads the saved state s.Incoming, as Start would resume s
	// (same hardware, disks and vmgenid device; s.NICs is not used, and
	// s.Dir is an empty scratch directory for the hypervisor's runtime
	// files), without ever running the guest or writing its disks, and
	// writes the new files ram and state, synced and made read-only. On
	// error neither is left and nothing runs.
	Template(ctx context.Context, s StartSpec, ram, state string) error
}

// Links is a driver that plugs and unplugs the virtual cable of a running
// machine's NICs (by slot): while a link is down the guest sees no
// carrier and the hypervisor passes no frame either way. vmfest keeps a
// clone that resumed from its source's memory off its networks this way
// until its guest has taken the clone's MACs. Called with the machine's
// lock held, or while a start or a clone that holds it waits.
type Links interface {
	SetLink(ctx context.Context, m Machine, slot int, up bool) error
}

// Driver is a hypervisor as vmfest's orchestration uses it. Saved state is
// the further interface Saver; snapshots and clones will be more, all
// announced by Features.MemorySnapshots.
type Driver interface {
	// Info names the driver and says what it can do.
	Info() Info
	Lifecycle
	Console
	GuestAgent
}

// Interface is one network interface the guest agent reports.
type Interface struct {
	Name        string `json:"name"`
	HWAddress   string `json:"hardware-address"`
	IPAddresses []struct {
		Type    string `json:"ip-address-type"`
		Address string `json:"ip-address"`
		Prefix  int    `json:"prefix"`
	} `json:"ip-addresses"`
}

// Interfaces asks the guest agent for the guest's network interfaces
// (guest-network-get-interfaces).
func Interfaces(ctx context.Context, a Agent) ([]Interface, error) {
	raw, err := a.Execute(ctx, "guest-network-get-interfaces", nil)
	if err != nil {
		return nil, err
	}
	var out []Interface
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("guest-network-get-interfaces: %w", err)
	}
	return out, nil
}
