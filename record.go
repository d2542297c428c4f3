package vmfest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// record is machine.json: what a machine is made of. Its run state is never
// stored here; it is derived from its driver on each read.
type record struct {
	Name          string        `json:"name"`
	Created       time.Time     `json:"created"`
	ImageModel    string        `json:"image-model,omitempty"`
	Image         spec.Image    `json:"image"`
	HardwareModel string        `json:"hardware-model,omitempty"`
	Hardware      spec.Hardware `json:"hardware"`
	// Overlay is true when the disk is disk.qcow2 in the machine directory,
	// backed by Image.Location; else the disk is Image.Location itself.
	Overlay bool `json:"overlay"`
	// DiskFormat is the format of the disk QEMU opens: qcow2 for an
	// overlay, else Image.Location's format. Like BaseFormat it is decided
	// once, when the machine is created, and given to QEMU on every start:
	// what a guest later writes at the start of its disk decides nothing.
	DiskFormat string `json:"disk-format"`
	// BaseFormat is Image.Location's format when Overlay. Records written
	// before it existed have none; see baseFormat.
	BaseFormat string `json:"base-format,omitempty"`
	// Driver names the driver that runs the machine, chosen when it is
	// created; empty in records of an older vmfest: qemu.
	Driver string `json:"driver,omitempty"`
	// Accel is the accelerator of the last start.
	Accel string `json:"accel,omitempty"`
	// Labels are the user's labels.
	Labels map[string]string `json:"labels,omitempty"`
	// UserData: the user's user-data is the file store.UserDataFile in the
	// machine directory.
	UserData bool `json:"user-data,omitempty"`
	// Net is the machine's networking: instance id, network allocations,
	// SSH forwards (see networks.go).
	Net netRecord `json:"net"`
	// GenID is the machine's VM generation ID (a GUID), given to its
	// guest by a vmgenid device; a clone gets a new one. Records of an
	// older vmfest have none, and their machines no such device.
	GenID string `json:"genid,omitempty"`
	// Reidentify, when set, says the machine is a clone started from its
	// source's memory whose guest still has to take the clone's own
	// identity (see reidentify.go): set before the clone first starts,
	// cleared once its guest has it; each start tries again.
	Reidentify *reidentifyRecord `json:"reidentify,omitempty"`
}

func (r record) disk(dir string) string {
	if r.Overlay {
		return filepath.Join(dir, store.DiskFile)
	}
	return r.Image.Location
}

// baseFormat is the recorded format of an overlay's base.
func (r record) baseFormat(dir string) (string, error) {
	switch {
	case r.BaseFormat != "":
		return r.BaseFormat, nil
	case r.ImageModel != "":
		return spec.DiskFormatQCOW2, nil
	}
	// A record of an older vmfest: the format vmfest itself wrote into the
	// overlay's header when it made it (never the base's own bytes).
	f, err := overlayBackingFormat(filepath.Join(dir, store.DiskFile))
	if err != nil {
		return "", fmt.Errorf("the format of its base image %s is not recorded: %w", r.Image.Location, err)
	}
	return f, nil
}

// driverDisk is the disk as the driver opens it: every format given, the
// chain spelled out.
func (r record) driverDisk(dir string) (driver.Disk, error) {
	if !r.Overlay {
		return driver.Disk{Path: r.Image.Location, Format: r.DiskFormat}, nil
	}
	bf, err := r.baseFormat(dir)
	if err != nil {
		return driver.Disk{}, err
	}
	return driver.Disk{Path: r.disk(dir), Format: spec.DiskFormatQCOW2, BackingPath: r.Image.Location, BackingFormat: bf}, nil
}

func (l *Local) readRecord(name string) (record, error) {
	path := filepath.Join(l.home.MachinePath(name), store.MachineFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return record{}, fmt.Errorf("%w: machine %q", ErrNotFound, name)
	}
	if err != nil {
		return record{}, fmt.Errorf("machine %s: %w", name, err)
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return record{}, fmt.Errorf("machine %s: %s is corrupt: %w", name, path, err)
	}
	return r, nil
}

func writeRecord(dir string, r record) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return store.WriteFileAtomic(filepath.Join(dir, store.MachineFile), append(data, '\n'), 0o644)
}
