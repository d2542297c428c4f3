package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// File names QEMU uses inside a machine's directory (the machine
// directory's layout is package store's).
const (
	QMPSocket = store.QMPSocket
	QGASocket = store.QGASocket
	SerialLog = store.SerialLog
	PIDFile   = store.PIDFile
	LogFile   = store.QEMULog
	// scratchFile is a template QEMU's scratch disk (Config.Scratch), in
	// its own throwaway directory.
	scratchFile = "scratch.qcow2"
)

// ramBackendID names the memory backend of a machine whose RAM is a file:
// QEMU's own name for the pc machine's RAM (its default-ram-id), so a
// migration stream's RAM block matches whichever way the RAM is backed.
const ramBackendID = "pc.ram"

// AgentPortName is the virtio-serial port name the QEMU guest agent uses.
const AgentPortName = "org.qemu.guest_agent.0"

// Disk is the boot disk attached at the hardware's boot mount point. QEMU
// opens it as -blockdev nodes with every format given and its chain spelled
// out: nothing is probed, and no file named inside an image (a backing
// file, a backing format) is opened.
type Disk = driver.Disk

// blockNode is one -blockdev node, written as JSON (so no file name needs
// QEMU's comma escaping, and backing can be null).
type blockNode struct {
	Driver   string          `json:"driver"`
	NodeName string          `json:"node-name"`
	Filename string          `json:"filename,omitempty"`
	File     string          `json:"file,omitempty"`
	Backing  json.RawMessage `json:"backing,omitempty"`
	ReadOnly bool            `json:"read-only,omitempty"`
	Discard  string          `json:"discard,omitempty"`
}

// blockdevArgs returns the -blockdev options of the disk; its top node is
// named id. A qcow2 node always has backing set: null, or the base's node,
// which itself has backing null.
func blockdevArgs(d Disk, id string) ([]string, error) { return blockdevNodes(d, id, false) }

// blockdevNodes is blockdevArgs; with readOnly, the top node and its file
// are opened read-only too.
func blockdevNodes(d Disk, id string, readOnly bool) ([]string, error) {
	return blockdevChain(d, id, readOnly, "")
}

// blockdevChain is blockdevNodes with, when scratch is set, a writable
// qcow2 file of that path (the disk's virtual size, no backing file in its
// header) stacked on the read-only disk as node id: a template's QEMU
// (Config.Scratch) then has a disk that a device needing write access
// (ide-hd) accepts, and its writes, if any, never reach the disk.
func blockdevChain(d Disk, id string, readOnly bool, scratch string) ([]string, error) {
	var nodes []blockNode
	diskID := id
	if scratch != "" {
		diskID, readOnly = id+"-ro", true
	}
	top := blockNode{Driver: d.Format, NodeName: diskID, File: diskID + "-file", Discard: "unmap", ReadOnly: readOnly}
	if d.Format == "qcow2" {
		top.Backing = json.RawMessage("null")
	}
	if d.BackingPath != "" {
		base := id + "-base"
		nodes = append(nodes,
			blockNode{Driver: "file", NodeName: base + "-file", Filename: d.BackingPath, ReadOnly: true},
			blockNode{Driver: d.BackingFormat, NodeName: base, File: base + "-file", ReadOnly: true})
		if d.BackingFormat == "qcow2" {
			nodes[1].Backing = json.RawMessage("null")
		}
		name, _ := json.Marshal(base)
		top.Backing = name
	}
	nodes = append(nodes, blockNode{Driver: "file", NodeName: diskID + "-file", Filename: d.Path, Discard: "unmap", ReadOnly: readOnly}, top)
	if scratch != "" {
		below, _ := json.Marshal(diskID)
		nodes = append(nodes,
			blockNode{Driver: "file", NodeName: id + "-file", Filename: scratch},
			blockNode{Driver: "qcow2", NodeName: id, File: id + "-file", Backing: below})
	}
	var args []string
	for _, n := range nodes {
		js, err := json.Marshal(n)
		if err != nil {
			return nil, err
		}
		args = append(args, "-blockdev", string(js))
	}
	return args, nil
}

// Config is everything needed to run one machine.
type Config struct {
	// Name is the machine's name, shown by QEMU as the process name.
	Name string
	// Dir is the machine's directory: sockets, pidfile and logs go there.
	// Unix socket paths must stay under 108 bytes, so keep it short.
	Dir string
	// Hardware is the resolved, validated hardware with every NIC's MAC set.
	Hardware spec.Hardware
	// Disk is the boot disk.
	Disk Disk
	// Accel is "kvm" or "tcg".
	Accel string
	// Binary is the QEMU system emulator; default qemu-system-x86_64.
	Binary string
	// OVMF is the EFI firmware image used when Hardware.Firmware is efi;
	// default /usr/share/ovmf/OVMF.fd.
	OVMF string
	// NICs are the host ends of the adapters, indexed by slot like
	// Hardware.Network: the tap of a host-only, bridged or internal
	// adapter, the SSH forward of a nat adapter.
	NICs []NICBackend
	// CIData is a NoCloud seed ISO (cloud-init), attached read-only in the
	// first empty dvd slot, else as a CD-ROM on a virtio-scsi controller
	// of its own. Empty: none.
	CIData string
	// Drives are the files in the other storage slots (volumes, a user's
	// disks, ISOs).
	Drives []driver.Drive
	// Incoming, when set, is a saved-state file positioned at its
	// migration stream: QEMU gets it as descriptor 3 and loads the machine
	// from it (-incoming fd:3) instead of booting, its CPUs held stopped
	// (-S) until a QMP cont.
	Incoming *os.File
	// MemoryFile, when set, is a file that holds the guest's RAM
	// (memory-backend-file, named pc.ram as QEMU names its default RAM,
	// so migration streams load either way): mapped shared
	// (MemoryShared: the guest's writes go to the file) or private
	// (copy-on-write: pages stay the page cache's, shared with every
	// other mapping of the file, until the guest writes them; the file is
	// never written).
	MemoryFile   string
	MemoryShared bool
	// IgnoreShared: Incoming is a stream written with the migration
	// capability x-ignore-shared, without the RAM MemoryFile holds.
	// QEMU 7.2 has no command-line switch for the capability, so QEMU
	// starts with -incoming defer and Start sets it over QMP and then
	// reads descriptor 3 (migrate-incoming).
	IgnoreShared bool
	// Template: QEMU loads Incoming only to write a memory template and
	// never runs the guest: its disks are opened read-only, a tap NIC gets
	// a tap the kernel names (never plugged anywhere; it goes with QEMU),
	// a nat NIC no forwards.
	Template bool
	// Scratch, with Template, is a qcow2 file stacked writable on the
	// read-only boot disk (blockdevChain): an ide-hd refuses a read-only
	// disk when the loaded state activates it.
	Scratch string
	// LoadVM, when set, is an internal snapshot of Disk with memory that
	// the machine starts from (-loadvm), running where it was.
	LoadVM string
	// GenID, when set, is the VM generation ID given to the guest by a
	// vmgenid device (driver.StartSpec.GenID).
	GenID string
	// PCI, when set, pins PCI devices to the addresses they had when an
	// Incoming state was saved, by device id (savedHeader.PCI). QEMU names
	// each device's state in the stream by its PCI address, and gives a
	// device without one the first free slot in command-line order: a
	// disk unplugged or plugged while the machine ran would otherwise move
	// every device after it, and the state would not load.
	PCI map[string]string
}

// pinPCI appends addr= to a PCI device's -device value when c.PCI has an
// address for its id.
func (c Config) pinPCI(device, id string) string {
	if a, ok := c.PCI[id]; ok {
		return device + ",addr=" + a
	}
	return device
}

// NICBackend is the host end of one adapter: the tap QEMU creates for a
// host-only, bridged or internal adapter (script=no: the caller plugs it
// into its bridge once QEMU runs, and QEMU removes it when it exits), or a
// nat adapter's SSH forward.
type NICBackend = driver.NIC

func (c Config) binary() string {
	if c.Binary != "" {
		return c.Binary
	}
	return "qemu-system-x86_64"
}

// Path returns the path of a file in the machine's directory.
func (c Config) Path(name string) string { return filepath.Join(c.Dir, name) }

// maxSocketPath is the longest path a Unix socket address holds.
const maxSocketPath = 107

var nicModels = map[string]string{
	spec.AdapterVirtio:  "virtio-net-pci",
	spec.AdapterE1000:   "e1000",
	spec.AdapterRTL8139: "rtl8139",
	spec.AdapterPCNet:   "pcnet",
}

// Args returns QEMU's command line (without the binary) for the machine. QEMU
// daemonizes itself, so the machine outlives whoever started it.
func (c Config) Args() ([]string, error) {
	h := c.Hardware
	if c.Dir == "" || !filepath.IsAbs(c.Dir) {
		return nil, fmt.Errorf("machine directory %q: must be an absolute path", c.Dir)
	}
	if l := len(c.Path(QMPSocket)); l > maxSocketPath {
		return nil, fmt.Errorf("machine directory %s is too long for its sockets (%d bytes, at most %d): use a shorter state directory", c.Dir, l, maxSocketPath)
	}
	if c.Accel != AccelKVM && c.Accel != AccelTCG {
		return nil, fmt.Errorf("accelerator %q: allowed: kvm, tcg", c.Accel)
	}
	if err := c.Disk.Validate(); err != nil {
		return nil, err
	}
	if h.BootMountPoint == nil {
		return nil, errors.New("hardware has no boot-mount-point")
	}
	machine := "pc,accel=" + c.Accel
	if h.ACPIEnabled != nil && !*h.ACPIEnabled {
		machine += ",acpi=off"
	}
	if c.MemoryFile != "" {
		machine += ",memory-backend=" + ramBackendID
	}
	if c.IgnoreShared && (c.Incoming == nil || c.MemoryFile == "" || c.MemoryShared) {
		return nil, errors.New("a stream without the guest's RAM (ignore-shared) loads only into a private memory file")
	}
	args := []string{
		"-name", c.Name + ",process=vmfest-" + c.Name,
		"-machine", machine,
		"-m", strconv.Itoa(h.MemorySize),
		"-smp", strconv.Itoa(h.CPUCount),
		"-nodefaults", "-no-user-config",
		"-display", "none",
		// A bounded ring, drained into SerialLog by vmfest (console.go).
		"-chardev", "ringbuf,id=" + consoleChardev + ",size=" + strconv.Itoa(ConsoleRingSize),
		"-serial", "chardev:serial0",
		"-qmp", "unix:" + escapeComma(c.Path(QMPSocket)) + ",server=on,wait=off",
		"-chardev", "socket,id=qga0,path=" + escapeComma(c.Path(QGASocket)) + ",server=on,wait=off",
		"-device", c.pinPCI("virtio-serial-pci,id=vser0", "vser0"),
		"-device", "virtserialport,bus=vser0.0,chardev=qga0,name=" + AgentPortName,
		"-pidfile", c.Path(PIDFile),
		"-daemonize",
	}
	if c.Accel == AccelKVM {
		args = append(args, "-cpu", "host")
	}
	if c.MemoryFile != "" {
		if !filepath.IsAbs(c.MemoryFile) {
			return nil, fmt.Errorf("memory file %q: must be an absolute path", c.MemoryFile)
		}
		share := "off"
		if c.MemoryShared {
			share = "on"
		}
		args = append(args, "-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=%s",
			ramBackendID, h.MemorySize, escapeComma(c.MemoryFile), share))
	}
	switch {
	case c.Incoming != nil && c.IgnoreShared:
		args = append(args, "-S", "-incoming", "defer")
	case c.Incoming != nil:
		args = append(args, "-S", "-incoming", "fd:"+strconv.Itoa(incomingFD))
	}
	if c.LoadVM != "" {
		args = append(args, "-loadvm", c.LoadVM)
	}
	if c.GenID != "" {
		if !driver.ValidGenID(c.GenID) {
			return nil, fmt.Errorf("VM generation ID %q: must be a GUID (8-4-4-4-12 hex digits)", c.GenID)
		}
		// The device's GUID is not part of the migration stream: a
		// machine resumed from a saved state gets the one given here,
		// written into its memory when the state is loaded.
		args = append(args, "-device", "vmgenid,guid="+c.GenID)
	}
	if h.Firmware == spec.FirmwareEFI {
		fw := c.OVMF
		if fw == "" {
			fw = "/usr/share/ovmf/OVMF.fd"
		}
		if _, err := os.Stat(fw); err != nil {
			return nil, fmt.Errorf("firmware efi needs the OVMF image %s (Debian package ovmf): %w", fw, err)
		}
		args = append(args, "-bios", fw)
	}
	storage, err := c.storageArgs()
	if err != nil {
		return nil, err
	}
	args = append(args, storage...)
	for i, n := range h.Network {
		if n.AttachmentType == spec.AttachNone {
			continue // an unplugged adapter: VirtualBox's "not attached"
		}
		model, ok := nicModels[n.AdapterType]
		if !ok {
			return nil, fmt.Errorf("network[%d].adapter-type %q: not supported", i, n.AdapterType)
		}
		if n.MACAddress == "" {
			return nil, fmt.Errorf("network[%d]: no MAC address assigned", i)
		}
		id := "net" + strconv.Itoa(i)
		var be NICBackend
		if i < len(c.NICs) {
			be = c.NICs[i]
		}
		switch n.AttachmentType {
		case spec.AttachNAT:
			netdev := "user,id=" + id
			if c.Template {
				args = append(args, "-netdev", netdev)
				break
			}
			if be.SSHPort > 0 {
				netdev += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:22", be.SSHPort)
			}
			for _, r := range n.NATRules {
				netdev += fmt.Sprintf(",hostfwd=%s:%s:%d-:%d", r.Protocol, r.HostIP, r.HostPort, r.GuestPort)
			}
			args = append(args, "-netdev", netdev)
		case spec.AttachHostOnly, spec.AttachBridged, spec.AttachInternal:
			if c.Template {
				// The device's state (vnet_hdr, offloads) depends on its
				// peer being a tap, so a tap it is, nameless and unplugged.
				args = append(args, "-netdev", "tap,id="+id+",script=no,downscript=no")
				break
			}
			if be.Tap == "" {
				return nil, fmt.Errorf("network[%d]: a %s adapter needs a tap and none was set up", i, n.AttachmentType)
			}
			args = append(args, "-netdev", "tap,id="+id+",ifname="+escapeComma(be.Tap)+",script=no,downscript=no")
		default:
			return nil, fmt.Errorf("network[%d].attachment-type %q: not supported", i, n.AttachmentType)
		}
		// romfile= leaves out the NIC's iPXE option ROM: vmfest boots
		// from disk, and a guest that cannot would otherwise fall back to
		// PXE and take a DHCP address as if it had booted.
		dev := "nic" + strconv.Itoa(i)
		args = append(args, "-device", c.pinPCI(model+",netdev="+id+",mac="+n.MACAddress+",romfile=,id="+dev, dev))
	}
	return args, nil
}

func (c Config) storageArgs() ([]string, error) {
	h := c.Hardware
	bp := *h.BootMountPoint
	var args []string
	booted := false
	seeded := c.CIData == ""
	for ci, ctl := range h.Storage {
		ctlID := "ctl" + strconv.Itoa(ci)
		switch ctl.Bus {
		case spec.BusIDE: // the pc machine's built-in controller: ide.0, ide.1
		case spec.BusSATA:
			args = append(args, "-device", c.pinPCI("ahci,id="+ctlID, ctlID))
		case spec.BusSCSI:
			args = append(args, "-device", c.pinPCI("virtio-scsi-pci,id="+ctlID, ctlID))
		case spec.BusVirtio:
		default:
			return nil, fmt.Errorf("storage[%d].bus %q: not supported", ci, ctl.Bus)
		}
		for _, sl := range h.Slots(ctl) {
			slot, kind, boot := sl.Index, sl.Kind, sl.Boot
			driveID := fmt.Sprintf("%s-%d", ctlID, slot)
			var drive string
			switch {
			case boot:
				nodes, err := blockdevChain(c.Disk, driveID, c.Template, c.Scratch)
				if err != nil {
					return nil, err
				}
				args = append(args, nodes...)
				booted = true
			case kind == spec.DeviceDVD:
				iso := ""
				if dr, ok := (driver.StartSpec{Drives: c.Drives}).Drive(ctl.Name, slot); ok {
					if !filepath.IsAbs(dr.Disk.Path) {
						return nil, fmt.Errorf("storage %q slot %d: ISO path %q: must be an absolute path", ctl.Name, slot, dr.Disk.Path)
					}
					iso = dr.Disk.Path
				} else if !seeded {
					iso, seeded = c.CIData, true
				}
				drive = fmt.Sprintf("if=none,id=%s,media=cdrom,readonly=on", driveID)
				if iso != "" {
					drive += ",file=" + escapeComma(iso) + ",format=raw"
				}
			default:
				dr, ok := (driver.StartSpec{Drives: c.Drives}).Drive(ctl.Name, slot)
				if !ok {
					return nil, fmt.Errorf("storage %q slot %d: a hard-disk slot needs a disk (a volume or a location)", ctl.Name, slot)
				}
				if err := dr.Disk.Validate(); err != nil {
					return nil, fmt.Errorf("storage %q slot %d: %w", ctl.Name, slot, err)
				}
				nodes, err := blockdevNodes(dr.Disk, driveID, c.Template)
				if err != nil {
					return nil, err
				}
				args = append(args, nodes...)
			}
			device, err := deviceArg(ctl.Bus, kind, ctlID, slot)
			if err != nil {
				return nil, fmt.Errorf("storage %q slot %d: %w", ctl.Name, slot, err)
			}
			device += ",drive=" + driveID + ",id=" + driveID + "-dev"
			if ctl.Bus == spec.BusVirtio {
				device = c.pinPCI(device, driveID+"-dev")
			}
			if boot {
				device += ",bootindex=0"
			}
			if drive != "" {
				args = append(args, "-drive", drive)
			}
			args = append(args, "-device", device)
		}
	}
	if !booted {
		return nil, fmt.Errorf("boot-mount-point %s: no such controller", bp)
	}
	if !seeded {
		args = append(args,
			"-drive", "if=none,id=cidata,media=cdrom,readonly=on,format=raw,file="+escapeComma(c.CIData),
			"-device", c.pinPCI("virtio-scsi-pci,id=cidata-scsi", "cidata-scsi"),
			"-device", "scsi-cd,bus=cidata-scsi.0,channel=0,scsi-id=0,lun=0,drive=cidata")
	}
	return args, nil
}

func deviceArg(bus, kind, ctlID string, slot int) (string, error) {
	dvd := kind == spec.DeviceDVD
	switch bus {
	case spec.BusIDE:
		model := "ide-hd"
		if dvd {
			model = "ide-cd"
		}
		return fmt.Sprintf("%s,bus=ide.%d,unit=%d", model, slot/2, slot%2), nil
	case spec.BusSATA:
		model := "ide-hd"
		if dvd {
			model = "ide-cd"
		}
		return fmt.Sprintf("%s,bus=%s.%d", model, ctlID, slot), nil
	case spec.BusSCSI:
		model := "scsi-hd"
		if dvd {
			model = "scsi-cd"
		}
		return fmt.Sprintf("%s,bus=%s.0,channel=0,scsi-id=%d,lun=0", model, ctlID, slot), nil
	case spec.BusVirtio:
		if dvd {
			return "", errors.New("a virtio bus holds hard disks only; put the dvd on ide, sata or scsi")
		}
		return "virtio-blk-pci", nil
	}
	return "", fmt.Errorf("bus %q: not supported", bus)
}

// escapeComma doubles commas, QEMU's escape inside option values.
func escapeComma(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		out = append(out, s[i])
		if s[i] == ',' {
			out = append(out, ',')
		}
	}
	return string(out)
}
