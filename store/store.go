// Package store owns vmfest's state directory ($VMFEST_HOME): its layout
// (every file name is a constant here, so the layout is a reviewed API),
// atomic writes, per-object file locks and name validation.
package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
)

// File and directory names inside the state directory.
const (
	MachinesDir       = "machines"
	ModelsDir         = "models"
	ImageModelsDir    = "images"
	HardwareModelsDir = "hardware"
	NetworksDir       = "networks"
	VolumesDir        = "volumes"
	CacheDir          = "cache"
)

// File names inside a machine directory.
const (
	MachineFile  = "machine.json"
	DiskFile     = "disk.qcow2"
	QMPSocket    = "qmp.sock"
	QGASocket    = "qga.sock"
	SerialLog    = "serial.log"
	SerialLogOld = "serial.log.1"
	SerialLock   = "serial.lock"
	PIDFile      = "qemu.pid"
	QEMULog      = "qemu.log"
	StoppingFile = "stopping"
	CIDataISO    = "cidata.iso"
	UserDataFile = "user-data"
	// SavedStateFile holds a saved machine's memory and device state; it
	// is written as SavedStateFile+".new" and renamed into place.
	SavedStateFile = "saved.state"
	// SavedMemoryFile is the guest's RAM beside a SavedStateFile that
	// leaves it out: a clone's saved state made from its source's memory
	// template (hard links of TemplateMemoryFile and TemplateStateFile).
	// Neither is ever written.
	SavedMemoryFile = "saved.ram"
	// TemplateDir holds a saved machine's memory template, made on its
	// first clone from its SavedStateFile and removed with it:
	// TemplateMemoryFile (the guest's RAM) and TemplateStateFile (the
	// rest). It is built in a TemplateTempPrefix+"*" directory (the
	// hypervisor's runtime files in its TemplateRunDir) and renamed into
	// place whole.
	TemplateDir        = "template"
	TemplateTempPrefix = ".template-"
	TemplateRunDir     = "run"
	TemplateMemoryFile = "ram"
	TemplateStateFile  = "state"
	// SnapshotPCIGlob matches the files that keep, for each memory
	// snapshot of the disk, where its devices were (SnapshotPCIFile): they
	// go with the disk when it is copied.
	SnapshotPCIGlob = "snapshot-*.pci"
)

// SnapshotPCIFile is the file that keeps the PCI addresses of the devices
// of a machine when its memory snapshot tag was taken (the QEMU driver's).
func SnapshotPCIFile(tag string) string { return "snapshot-" + tag + ".pci" }

// File names inside a volume directory.
const (
	VolumeFile     = "volume.json"
	VolumeDiskFile = "disk.qcow2"
)

// File names inside an image model directory.
const (
	ModelFile     = "model.json"
	ModelDiskFile = "disk.qcow2"
)

// ErrInvalidName is wrapped by errors about machine or model names.
var ErrInvalidName = errors.New("invalid name")

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidateName checks a machine, model or network name: 1 to 63 characters
// of letters, digits, '.', '_' and '-', starting with a letter or digit. A
// valid name is always safe to use as one path element.
func ValidateName(kind, name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%w: %s name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", ErrInvalidName, kind, name)
	}
	return nil
}

// Home is a state directory. Its zero value is not usable; use Open.
type Home struct {
	root string
}

// Open returns the state directory at root, creating its top-level
// directories when missing.
func Open(root string) (*Home, error) {
	if root == "" {
		return nil, errors.New("state directory: no path given")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("state directory %s: %w", root, err)
	}
	for _, d := range []string{MachinesDir, VolumesDir, filepath.Join(ModelsDir, ImageModelsDir), filepath.Join(ModelsDir, HardwareModelsDir)} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o755); err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
	}
	return &Home{root: abs}, nil
}

// DefaultRoot is $VMFEST_HOME, else ~/.vmfest.
func DefaultRoot() string {
	if h := os.Getenv("VMFEST_HOME"); h != "" {
		return h
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".vmfest"
	}
	return filepath.Join(home, ".vmfest")
}

// Root is the state directory's absolute path.
func (h *Home) Root() string { return h.root }

// MachinesPath is the directory holding one directory per machine.
func (h *Home) MachinesPath() string { return filepath.Join(h.root, MachinesDir) }

// MachinePath is the directory of the named machine.
func (h *Home) MachinePath(name string) string { return filepath.Join(h.root, MachinesDir, name) }

// VolumesPath is the directory holding one directory per volume.
func (h *Home) VolumesPath() string { return filepath.Join(h.root, VolumesDir) }

// VolumePath is the directory of the named volume.
func (h *Home) VolumePath(name string) string { return filepath.Join(h.root, VolumesDir, name) }

// VolumeDisk is the disk file of the named volume.
func (h *Home) VolumeDisk(name string) string {
	return filepath.Join(h.root, VolumesDir, name, VolumeDiskFile)
}

// ImageModelsPath is the directory holding one directory per image model.
func (h *Home) ImageModelsPath() string { return filepath.Join(h.root, ModelsDir, ImageModelsDir) }

// HardwareModelsPath is the directory of the user's hardware model files.
func (h *Home) HardwareModelsPath() string {
	return filepath.Join(h.root, ModelsDir, HardwareModelsDir)
}
