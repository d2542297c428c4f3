package vmfest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
)

// Attachment is what to put in a machine's storage slot: a volume, a disk
// image of the user's, or an ISO. Give one of Volume, Disk and ISO.
type Attachment struct {
	// Volume names a vmfest volume, held by a hard-disk slot.
	Volume string `json:"volume,omitempty"`
	// Disk is the path of a disk image (qcow2 or raw) on the server,
	// held writable by a hard-disk slot. vmfest never deletes it.
	Disk string `json:"disk,omitempty"`
	// ISO is the path of an ISO image on the server, held read-only by a
	// dvd slot. vmfest never changes or deletes it.
	ISO string `json:"iso,omitempty"`
	// Slot is where, a controller and a slot; nil: the first free one
	// (for a disk, a new virtio controller when no slot is free).
	Slot *spec.MountPoint `json:"slot,omitempty"`
}

func (a Attachment) String() string {
	switch {
	case a.Volume != "":
		return "volume " + a.Volume
	case a.Disk != "":
		return "disk " + a.Disk
	case a.ISO != "":
		return "ISO " + a.ISO
	case a.Slot != nil:
		return "slot " + a.Slot.String()
	}
	return "nothing"
}

// kind is the device type the attachment needs.
func (a Attachment) kind() string {
	if a.ISO != "" {
		return spec.DeviceDVD
	}
	return spec.DeviceHardDisk
}

func (a Attachment) check() error {
	n := 0
	for _, s := range []string{a.Volume, a.Disk, a.ISO} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("%w: attach: give one of a volume, a disk or an ISO", ErrInvalid)
	}
	return nil
}

// VolumesController is the controller vmfest adds for disks when a
// machine's hardware has no free slot.
const VolumesController = "Volumes"

// placedMedia is one storage device that holds a file.
type placedMedia struct {
	at  spec.MountPoint
	dev *spec.Device
}

// media lists the record's devices that hold a file, in slot order.
func (r record) media() []placedMedia {
	var out []placedMedia
	for _, c := range r.Hardware.Storage {
		for i, d := range c.Devices {
			if d.Media() {
				out = append(out, placedMedia{at: spec.MountPoint{Controller: c.Name, Slot: i}, dev: d})
			}
		}
	}
	return out
}

// mediaPath is the file a device holds, as the driver opens it.
func (l *Local) mediaPath(d *spec.Device) string {
	if d.Volume != "" {
		return l.home.VolumeDisk(d.Volume)
	}
	return d.Location
}

// place puts a's device in h: in a.Slot, or the first free slot, and
// returns where. It checks only the slot; the file is claimed later.
func place(h *spec.Hardware, a Attachment) (spec.MountPoint, error) {
	dev := &spec.Device{DeviceType: a.kind(), Volume: a.Volume, Location: a.Disk}
	if a.ISO != "" {
		dev.Location = a.ISO
	}
	fits := func(c spec.Controller, i int) bool {
		if bp := h.BootMountPoint; bp != nil && bp.Controller == c.Name && bp.Slot == i {
			return false
		}
		if i >= spec.SlotCount(c.Bus) {
			return false
		}
		if dev.DeviceType == spec.DeviceDVD && c.Bus == spec.BusVirtio {
			return false
		}
		if i >= len(c.Devices) || c.Devices[i] == nil {
			return true
		}
		// An empty dvd drive takes an ISO.
		d := c.Devices[i]
		return dev.DeviceType == spec.DeviceDVD && d.DeviceType == spec.DeviceDVD && !d.Media()
	}
	put := func(ci, i int) spec.MountPoint {
		c := &h.Storage[ci]
		for len(c.Devices) <= i {
			c.Devices = append(c.Devices, nil)
		}
		c.Devices[i] = dev
		return spec.MountPoint{Controller: c.Name, Slot: i}
	}
	if a.Slot != nil {
		ci := slices.IndexFunc(h.Storage, func(c spec.Controller) bool { return c.Name == a.Slot.Controller })
		if ci < 0 {
			names := make([]string, len(h.Storage))
			for i, c := range h.Storage {
				names[i] = fmt.Sprintf("%q", c.Name)
			}
			return spec.MountPoint{}, fmt.Errorf("%w: slot %s: %q names no controller; controllers: %s", ErrInvalid, a.Slot, a.Slot.Controller, strings.Join(names, ", "))
		}
		c := h.Storage[ci]
		i := a.Slot.Slot
		switch {
		case i < 0 || i >= spec.SlotCount(c.Bus):
			return spec.MountPoint{}, fmt.Errorf("%w: slot %s: %s has slots 0-%d", ErrInvalid, a.Slot, c.Name, spec.SlotCount(c.Bus)-1)
		case h.BootMountPoint != nil && *h.BootMountPoint == *a.Slot:
			return spec.MountPoint{}, fmt.Errorf("%w: slot %s is the boot mount point: it holds the machine's image", ErrInvalid, a.Slot)
		case dev.DeviceType == spec.DeviceDVD && c.Bus == spec.BusVirtio:
			return spec.MountPoint{}, fmt.Errorf("%w: slot %s: a virtio bus holds hard disks only; put the ISO on ide, sata or scsi", ErrInvalid, a.Slot)
		case !fits(c, i):
			return spec.MountPoint{}, fmt.Errorf("%w: slot %s already holds %s; detach it first or give another slot", ErrInvalid, a.Slot, describeDevice(c.Devices[i]))
		}
		return put(ci, i), nil
	}
	if dev.DeviceType == spec.DeviceHardDisk {
		for ci, c := range h.Storage {
			for i := range spec.SlotCount(c.Bus) {
				if fits(c, i) {
					return put(ci, i), nil
				}
			}
		}
	}
	if dev.DeviceType == spec.DeviceDVD {
		// An empty dvd drive first, then any free slot that takes one.
		for ci, c := range h.Storage {
			for i, d := range c.Devices {
				if d != nil && fits(c, i) {
					return put(ci, i), nil
				}
			}
		}
		for ci, c := range h.Storage {
			for i := range spec.SlotCount(c.Bus) {
				if fits(c, i) {
					return put(ci, i), nil
				}
			}
		}
		return spec.MountPoint{}, fmt.Errorf("%w: no free slot takes an ISO (a dvd needs an ide, sata or scsi controller); give the hardware one", ErrInvalid)
	}
	if !slices.ContainsFunc(h.Storage, func(c spec.Controller) bool { return c.Name == VolumesController }) {
		h.Storage = append(h.Storage, spec.Controller{Name: VolumesController, Bus: spec.BusVirtio})
		return put(len(h.Storage)-1, 0), nil
	}
	return spec.MountPoint{}, fmt.Errorf("%w: every storage slot is taken; detach something first", ErrInvalid)
}

func describeDevice(d *spec.Device) string {
	switch {
	case d == nil:
		return "nothing"
	case d.Volume != "":
		return "volume " + d.Volume
	case d.Location != "" && d.DeviceType == spec.DeviceDVD:
		return "ISO " + d.Location
	case d.Location != "":
		return "disk " + d.Location
	}
	return "an empty " + d.DeviceType
}

// unplace removes what matches a from h (by volume, path or slot) and
// returns where it was. A dvd drive stays, empty; a hard-disk slot is
// freed.
func unplace(h *spec.Hardware, a Attachment) (spec.MountPoint, error) {
	for ci := range h.Storage {
		c := &h.Storage[ci]
		for i, d := range c.Devices {
			if !d.Media() {
				continue
			}
			at := spec.MountPoint{Controller: c.Name, Slot: i}
			match := false
			switch {
			case a.Slot != nil && *a.Slot != at:
			case a.Volume != "":
				match = d.Volume == a.Volume
			case a.Disk != "":
				match = d.DeviceType == spec.DeviceHardDisk && samePath(d.Location, a.Disk)
			case a.ISO != "":
				match = d.DeviceType == spec.DeviceDVD && samePath(d.Location, a.ISO)
			default:
				match = a.Slot != nil
			}
			if !match {
				continue
			}
			if d.DeviceType == spec.DeviceDVD {
				c.Devices[i] = &spec.Device{DeviceType: spec.DeviceDVD}
			} else {
				c.Devices[i] = nil
			}
			return at, nil
		}
	}
	return spec.MountPoint{}, fmt.Errorf("%w: %s is not attached", ErrNotFound, a)
}

// samePath says whether recorded (a resolved path) is the file given.
func samePath(recorded, given string) bool {
	if recorded == given {
		return true
	}
	if real, err := filepath.EvalSymlinks(given); err == nil && real == recorded {
		return true
	}
	a, errA := os.Stat(recorded)
	b, errB := os.Stat(given)
	return errA == nil && errB == nil && os.SameFile(a, b)
}

// claimMedia decides, under lockDisks, whether the record's devices that
// hold a file may hold it (skipping those in keep, already the machine's),
// and records what was decided: a location's real path, a disk's format.
// A volume is held by one machine at a time; a disk file by one use; an
// ISO by any number of machines, read-only, and never a file a machine
// writes.
func (l *Local) claimMedia(r *record, keep []spec.MountPoint) error {
	seen := map[string]spec.MountPoint{}
	bootReal := r.Image.Location
	for _, pm := range r.media() {
		d, at := pm.dev, pm.at
		path := l.mediaPath(d)
		if slices.Contains(keep, at) {
			seen[path] = at
			continue
		}
		field := fmt.Sprintf("storage %s", at)
		switch {
		case d.Volume != "":
			vr, err := l.readVolume(d.Volume)
			if err != nil {
				return fmt.Errorf("%s: %w", field, err)
			}
			d.Format = ""
			path = l.home.VolumeDisk(vr.Name)
		default:
			real, err := l.checkMediaLocation(d.Location)
			if err != nil {
				return fmt.Errorf("%s: %w", field, err)
			}
			if real == bootReal {
				return fmt.Errorf("%w: %s: %s is the machine's own image", ErrInvalid, field, d.Location)
			}
			d.Location, path = real, real
			if d.DeviceType == spec.DeviceDVD {
				if err := checkISO(real); err != nil {
					return fmt.Errorf("%w: %s: %w", ErrInvalid, field, err)
				}
			} else {
				if d.Format, err = checkDisk(real, d.Format); err != nil {
					return fmt.Errorf("%s: %w", field, err)
				}
			}
		}
		if other, ok := seen[path]; ok {
			return fmt.Errorf("%w: %s: %s is already in slot %s of this machine", ErrInvalid, field, describeDevice(d), other)
		}
		seen[path] = at
		uses, err := l.diskUses(path)
		if err != nil {
			return err
		}
		for _, u := range uses {
			if u.machine == r.Name && u.at != nil && *u.at == at {
				continue // this slot's own file (Set re-claiming)
			}
			if d.DeviceType == spec.DeviceDVD && !u.mutable {
				continue // ISOs are shared read-only
			}
			return fmt.Errorf("%w: %s: %s is in use by machine %q; a disk is one machine's at a time", ErrWrongState, field, describeDevice(d), u.machine)
		}
	}
	return nil
}

// checkMediaLocation resolves a location a slot is given: a regular file
// that is none of vmfest's own (a machine's, a volume's or a model's).
func (l *Local) checkMediaLocation(loc string) (string, error) {
	if !filepath.IsAbs(loc) {
		return "", fmt.Errorf("%w: location %q: give an absolute path", ErrInvalid, loc)
	}
	real, err := filepath.EvalSymlinks(loc)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: location %s: no such file", ErrInvalid, loc)
	}
	if err != nil {
		return "", fmt.Errorf("location %s: %w", loc, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("location %s: %w", loc, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%w: location %s: not a regular file", ErrInvalid, loc)
	}
	for _, own := range []struct{ dir, what string }{
		{l.home.MachinesPath(), "a machine's file"},
		{l.home.VolumesPath(), "a volume's file: attach the volume by its name"},
		{l.home.ImageModelsPath(), "an image model's disk"},
	} {
		if within(real, own.dir) {
			return "", fmt.Errorf("%w: location %s: %s (%s) cannot be attached", ErrInvalid, loc, own.what, own.dir)
		}
	}
	return real, nil
}

// checkISO checks that the file is an ISO 9660 or UDF image: its volume
// descriptors start at byte 32768 with CD001, BEA01 or NSR02/03.
func checkISO(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var id [5]byte
	if _, err := f.ReadAt(id[:], 32769); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("ISO %s: %w", path, err)
	}
	switch string(id[:]) {
	case "CD001", "BEA01", "NSR02", "NSR03":
		return nil
	}
	return fmt.Errorf("ISO %s: not an ISO 9660 or UDF image (no volume descriptor at 32 KiB)", path)
}

// driveOf is the driver's view of the file a device holds.
func (l *Local) driveOf(pm placedMedia) driver.Drive {
	d := pm.dev
	dk := driver.Disk{Path: l.mediaPath(d), Format: d.Format}
	switch {
	case d.Volume != "":
		dk.Format = spec.DiskFormatQCOW2
	case d.DeviceType == spec.DeviceDVD:
		dk.Format = spec.DiskFormatRaw
	}
	return driver.Drive{Controller: pm.at.Controller, Slot: pm.at.Slot, Disk: dk}
}
