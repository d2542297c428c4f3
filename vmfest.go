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
// The hypervisor is a driver (package driver): QEMU run directly
// (driver/qemu, the default) or through libvirtd (driver/libvirt), chosen
// per server by Config and recorded per machine.
package vmfest

import (
	"context"
	"io"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/image"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
)

// State is a machine's run state: powered-off, running, paused, stopping,
// aborted (its hypervisor died without a clean power-off) or saved (its
// memory and device state on disk, see Machine.Save).
type State = driver.State

// The machine states.
const (
	PoweredOff = driver.PoweredOff
	Running    = driver.Running
	Paused     = driver.Paused
	Stopping   = driver.Stopping
	Aborted    = driver.Aborted
	Saved      = driver.Saved
)

// Image chooses a machine's image: an installed image model by id, or a
// full image spec.
type Image struct {
	Model string
	Spec  *spec.Image
	// SSHKeys are OpenSSH public keys, beside vmfest's own, that may log
	// in to a cloud-init image's user (given in its NoCloud seed).
	SSHKeys []string
}

// ImageModel chooses the installed image model id.
func ImageModel(id string) Image { return Image{Model: id} }

// ImageSpec chooses an image by its spec.
func ImageSpec(s spec.Image) Image { return Image{Spec: &s} }

// InstanceOption tunes Instance.
type InstanceOption func(*instanceOptions)

type instanceOptions struct {
	labels   map[string]string
	userData []byte
	driver   string
	attach   []Attachment
}

func instanceOpts(opts []InstanceOption) instanceOptions {
	var o instanceOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithLabels gives the machine labels (see CheckLabels); repeated, the
// sets are merged.
func WithLabels(labels map[string]string) InstanceOption {
	return func(o *instanceOptions) {
		if o.labels == nil {
			o.labels = map[string]string{}
		}
		for k, v := range labels {
			o.labels[k] = v
		}
	}
}

// WithAttachment puts a volume, a disk or an ISO in one of the machine's
// storage slots (its Slot, else the first free one); repeatable.
func WithAttachment(a Attachment) InstanceOption {
	return func(o *instanceOptions) { o.attach = append(o.attach, a) }
}

// WithDriver makes the named driver (qemu, libvirt) run the machine
// instead of the server's default; the machine keeps it for its life.
func WithDriver(name string) InstanceOption {
	return func(o *instanceOptions) { o.driver = name }
}

// WithUserData gives a cloud-init image's machine the user's user-data (a
// #cloud-config, a script, a MIME multipart, ...), passed to cloud-init
// whole beside vmfest's own settings, which never replace the user's. It
// is checked at create; an image without cloud-init refuses it.
func WithUserData(data []byte) InstanceOption {
	return func(o *instanceOptions) { o.userData = data }
}

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
	// Creation is atomic: on error nothing is left behind. Options give
	// the machine labels and a user-data.
	Instance(ctx context.Context, name string, image Image, hardware Hardware, opts ...InstanceOption) (Machine, error)
	// FindMachine returns the named machine or an error wrapping ErrNotFound.
	FindMachine(ctx context.Context, name string) (Machine, error)
	// Machines lists every machine, sorted by name.
	Machines(ctx context.Context) ([]Machine, error)
	// HardwareModels lists the hardware model names.
	HardwareModels(ctx context.Context) ([]string, error)
	// HardwareModel returns one hardware model with defaults applied.
	HardwareModel(ctx context.Context, name string) (spec.Hardware, error)
	// AddHardwareModel validates h and saves it as a user hardware model.
	AddHardwareModel(ctx context.Context, name string, h spec.Hardware) error
	// RemoveHardwareModel removes a user hardware model.
	RemoveHardwareModel(ctx context.Context, name string) error

	// SetupModel installs an immutable image model from source (a URL or
	// a path): fetched, verified, converted to qcow2 and installed
	// atomically.
	SetupModel(ctx context.Context, source string, opts SetupOptions) (model.ImageModel, error)
	// Models lists the installed image models.
	Models(ctx context.Context) ([]model.ImageModel, error)
	// Model returns one installed image model.
	Model(ctx context.Context, id string) (model.ImageModel, error)
	// RemoveModel removes an image model; it is refused while machines
	// use it.
	RemoveModel(ctx context.Context, id string) error

	// Networks lists the vmfest-managed networks.
	Networks(ctx context.Context) ([]Network, error)
	// CreateNetwork creates a vmfest-managed network.
	CreateNetwork(ctx context.Context, n NetworkSpec) (Network, error)
	// RemoveNetwork removes a network; it is refused while machines use it.
	RemoveNetwork(ctx context.Context, name string) error

	// CreateVolume creates an empty volume: a disk that outlives the
	// machines it is attached to.
	CreateVolume(ctx context.Context, s VolumeSpec) (Volume, error)
	// Volumes lists the volumes, sorted by name, with where each is
	// attached.
	Volumes(ctx context.Context) ([]Volume, error)
	// Volume returns one volume.
	Volume(ctx context.Context, name string) (Volume, error)
	// RemoveVolume deletes a volume and its data; it is refused while a
	// machine holds it.
	RemoveVolume(ctx context.Context, name string) error
}

// SetupOptions tunes SetupModel.
type SetupOptions struct {
	// ID names the model; default: derived from the source's file name.
	ID string `json:"id,omitempty"`
	// SHA256 is the expected digest of what is downloaded.
	SHA256 string `json:"sha256,omitempty"`
	// Meta is the image metadata; default: a sidecar .meta beside the source.
	Meta *spec.Image `json:"meta,omitempty"`
	// Overrides, when set, are laid over the metadata field by field (the
	// CLI's --os-family, --username, ... flags); a false bool changes nothing.
	Overrides *spec.Image `json:"overrides,omitempty"`
	// Replace an installed model of the same id (refused while in use).
	Replace bool `json:"replace,omitempty"`
	// Progress, when set, receives progress reports.
	Progress func(Progress) `json:"-"`
	// FetchPolicy limits where a remote source and its redirects may
	// connect. The zero value allows every address (the local user); the
	// API server sets a restricted one for callers over TCP. It never
	// travels over the wire: no caller can set it.
	FetchPolicy image.FetchPolicy `json:"-"`
}

// Progress reports how far long work (a download, a conversion) has got.
type Progress struct {
	// Phase is download (decompression and unpacking run as it streams;
	// Done counts bytes fetched), convert, verify or install.
	Phase string `json:"phase"`
	// Done and Total count bytes; Total is 0 when unknown.
	Done  int64 `json:"done"`
	Total int64 `json:"total,omitempty"`
}

// Network is a vmfest-managed network (host-only or internal).
type Network struct {
	Name string `json:"name"`
	// Kind is host-only or internal.
	Kind string `json:"kind"`
	// Bridge is the Linux bridge behind the network.
	Bridge string `json:"bridge,omitempty"`
	// Subnet is the network's IPv4 subnet in CIDR form; the host is .1.
	Subnet string `json:"subnet,omitempty"`
	// HostIP is the host's address on the network.
	HostIP string `json:"host-ip,omitempty"`
	// Machines lists the machines attached to it.
	Machines []string `json:"machines,omitempty"`
}

// NetworkSpec describes a network to create.
type NetworkSpec struct {
	Name string `json:"name"`
	// Kind is host-only (default) or internal.
	Kind string `json:"kind,omitempty"`
	// Subnet in CIDR form; default: the next free 192.168.X.0/24.
	Subnet string `json:"subnet,omitempty"`
}

// Address is where a machine's NIC can be reached.
type Address struct {
	// IP is the address.
	IP string `json:"ip"`
	// Port is set for a NAT-only NIC: the forwarded SSH port on IP
	// (127.0.0.1).
	Port int `json:"port,omitempty"`
	// Source says how the address was learnt: lease, agent, neighbour or
	// nat-forward.
	Source string `json:"source"`
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
	// runs (not when the guest is ready: see WaitReady). A saved machine
	// resumes instead, exactly where it was saved (running, or paused if
	// it was saved paused), its guest's clock set through the guest agent;
	// the saved state is then discarded.
	Start(ctx context.Context) error
	// Save writes a running or paused machine's memory and device state
	// beside its disk and ends its hypervisor: the machine is then saved
	// until Start resumes it, or PowerDown or Destroy discards the state.
	// A driver without Features.MemorySnapshots refuses it
	// (driver.ErrUnsupported).
	Save(ctx context.Context) error
	// Clone makes a new machine named name from this one, which it never
	// changes: the same image, hardware, labels, user-data and driver, new
	// MACs, network reservations and VM generation ID, and a copy of its
	// overlay over the same base. Of a powered-off or aborted machine the
	// clone is powered off. Of a saved, running or paused one (a running
	// or paused one is held stopped only while its state is written and
	// its overlay copied) the clone resumes from its memory, running
	// within a second, and its guest is then re-identified through the
	// guest agent: its MACs, DHCP addresses, host name and randomness. A
	// guest without an agent keeps its source's identity: the clone is
	// returned with an error wrapping ErrNotReidentified, off its
	// networks (what it sends from the source's MACs is dropped, or its
	// links are down), and a start from its saved state tries
	// again (a start after a power-down boots it with its own MACs). A
	// machine without an overlay, or with a volume or a disk of the
	// user's in a slot, is refused (ErrUnsupported).
	Clone(ctx context.Context, name string) (Machine, error)
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
	// Destroy removes a powered-off or aborted machine and its overlay, and
	// its disk when the image is not immutable (unless KeepDisk is given or
	// another machine uses the file).
	Destroy(ctx context.Context, opts ...DestroyOption) error
	// State reports the run state, read from the pidfile and QMP.
	State(ctx context.Context) (State, error)
	// Info reports the machine's description and state.
	Info(ctx context.Context) (Info, error)
	// WaitReady waits until the guest agent answers, bounded by ctx.
	WaitReady(ctx context.Context) error
	// ConsoleLog returns the serial console output of the current or last run.
	ConsoleLog(ctx context.Context) ([]byte, error)
	// IP returns the address of the NIC in slot, waiting for it until ctx
	// is done; the error on timeout names every source tried.
	IP(ctx context.Context, slot int) (Address, error)
	// Relabel sets the labels in set and removes those named in remove,
	// in any state.
	Relabel(ctx context.Context, set map[string]string, remove []string) error
	// Set changes a powered-off machine's hardware, validated as at
	// create; a larger disk-size grows its overlay. On error nothing
	// changes.
	Set(ctx context.Context, c Change) error
	// Exec runs a command in a running guest through its guest agent (no
	// network, no key) and returns how it ended, bounded by ctx
	// (DefaultExecTimeout when ctx has no deadline).
	Exec(ctx context.Context, req ExecRequest) (ExecResult, error)
	// TakeSnapshot takes snapshot name of the machine, inside its
	// overlay: its disk and memory when it runs or is paused (paused for
	// as long as that takes), its disk when it is powered off.
	TakeSnapshot(ctx context.Context, name string) (Snapshot, error)
	// Snapshots lists the machine's snapshots, oldest first.
	Snapshots(ctx context.Context) ([]Snapshot, error)
	// RestoreSnapshot goes back to snapshot name: a memory snapshot
	// brings the machine back running where it was (started from it when
	// powered off); a disk snapshot reverts a powered-off machine's disk.
	RestoreSnapshot(ctx context.Context, name string) error
	// DeleteSnapshot deletes snapshot name.
	DeleteSnapshot(ctx context.Context, name string) error
	// Attach puts a volume, a disk or an ISO in a storage slot of the
	// machine (the slot given, else the first free one) and returns the
	// slot; a running or paused machine gets it hot-plugged (a disk on a
	// virtio controller, an ISO in an empty dvd drive) when its driver
	// can. On error nothing changes.
	Attach(ctx context.Context, a Attachment) (spec.MountPoint, error)
	// Detach takes the volume, disk or ISO a names (or what a.Slot holds)
	// out of the machine and returns the slot it was in; the file itself
	// is kept. From a running machine a virtio disk is unplugged once the
	// guest lets it go.
	Detach(ctx context.Context, a Attachment) (spec.MountPoint, error)
	// CopyIn unpacks the tar stream r in a running guest: its one top
	// entry lands inside dst when dst is a directory there, else becomes
	// dst (absolute). Entries are directories, regular files and symbolic
	// links under the top; modes are kept. See CopyTo for the host side.
	CopyIn(ctx context.Context, dst string, r io.Reader, opts CopyOptions) error
	// CopyOut returns a tar stream of the running guest's src (absolute),
	// whose entries are src's base name and below it; the caller reads it
	// and closes it. A failure on the way is the error of a Read. See
	// CopyFrom for the host side.
	CopyOut(ctx context.Context, src string, opts CopyOptions) (io.ReadCloser, error)
}

// DestroyOption tunes Destroy.
type DestroyOption func(*destroyOptions)

type destroyOptions struct{ keepDisk bool }

// KeepDisk makes Destroy keep a mutable image's disk file (the machine's
// own disk, which goes with it by default, as in VMFest).
func KeepDisk() DestroyOption { return func(o *destroyOptions) { o.keepDisk = true } }

func destroyOpts(opts []DestroyOption) destroyOptions {
	var o destroyOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// DefaultStopTimeout bounds Stop when its context has no deadline.
const DefaultStopTimeout = 60 * time.Second

// DefaultExecTimeout bounds Exec when its context has no deadline.
const DefaultExecTimeout = 10 * time.Minute

// Info describes a machine.
type Info struct {
	Name  string `json:"name"`
	State State  `json:"state"`
	// Image is the image model id, or the image's location when the
	// machine was made from a spec.
	Image string `json:"image"`
	// Hardware is the hardware model name, or "custom".
	Hardware string `json:"hardware"`
	// Driver is the hypervisor driver that runs the machine (qemu,
	// libvirt).
	Driver string `json:"driver,omitempty"`
	// Accel is the accelerator of the current or last run (kvm or tcg).
	Accel string `json:"accel,omitempty"`
	// PID is the hypervisor's process id while the machine runs.
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
	// Networks says where each NIC is plugged in and the address known
	// without asking the guest (see Machine.IP for the confirmed one).
	Networks []NICInfo `json:"networks,omitempty"`
	// Labels are the user's key=value labels.
	Labels map[string]string `json:"labels,omitempty"`
	// UserData says the machine was given a user-data (kept with it, in
	// its directory).
	UserData bool `json:"user-data,omitempty"`
	// Media are the volumes, disks and ISOs in its storage slots.
	Media []MediaInfo `json:"media,omitempty"`
	// GenerationID is the VM generation ID its guest sees (a GUID; none
	// for a machine of an older vmfest).
	GenerationID string `json:"generation-id,omitempty"`
	// ReidentifyPending names the source of a clone whose guest still has
	// that source's identity (see Machine.Clone); its next start tries
	// again.
	ReidentifyPending string `json:"reidentify-pending,omitempty"`
}

// MediaInfo is a volume, a disk or an ISO in a machine's storage slot.
type MediaInfo struct {
	Slot spec.MountPoint `json:"slot"`
	// DeviceType is hard-disk or dvd.
	DeviceType string `json:"device-type"`
	// Volume names the volume, if it is one.
	Volume string `json:"volume,omitempty"`
	// Path is the file on the server.
	Path string `json:"path"`
}
