package vmfest

import (
	"context"
	"fmt"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
)

// Attach implements Machine: a machine gets a volume, a disk or an ISO in
// a storage slot. The file is claimed as at create (a volume or a disk is
// one machine's at a time) and the record is rewritten in one atomic
// write, so a crash leaves the machine with or without it. A running or
// paused machine gets it hot-plugged (a disk on a virtio controller, an
// ISO in an empty dvd drive) when its driver can.
func (m *localMachine) Attach(ctx context.Context, a Attachment) (spec.MountPoint, error) {
	return m.attach(ctx, a, nil)
}

// attach is Attach; at, when set (by crash tests), is called at each named
// point where a crash leaves a distinct state.
func (m *localMachine) attach(ctx context.Context, a Attachment, at func(point string)) (spec.MountPoint, error) {
	if err := a.check(); err != nil {
		return spec.MountPoint{}, err
	}
	var slot spec.MountPoint
	err := m.locked(ctx, func(r record, st State) error {
		if err := m.need("attach to", st, PoweredOff, Aborted, Running, Paused); err != nil {
			return err
		}
		old := r
		old.Hardware = r.Hardware.Clone()
		running := st == Running || st == Paused
		var plug driver.HotPlugger
		if running {
			d, err := m.drv(r)
			if err != nil {
				return err
			}
			var ok bool
			if plug, ok = d.(driver.HotPlugger); !ok {
				return fmt.Errorf("%w: the %s driver cannot change a running machine's disks: power %s down first", ErrUnsupported, d.Info().Name, m.name)
			}
			if a, err = hotSlot(&r.Hardware, a, r.Image.CloudInit); err != nil {
				return err
			}
		}
		keep := mediaSlots(r)
		var err error
		if slot, err = place(&r.Hardware, a); err != nil {
			return err
		}
		if err := m.l.checkHardware(r.Hardware, r.Overlay); err != nil {
			return err
		}
		claim, err := m.l.lockDisks(ctx)
		if err != nil {
			return fmt.Errorf("attach to machine %s: %w", m.name, err)
		}
		defer claim.Unlock()
		if err := m.l.claimMedia(&r, keep); err != nil {
			return err
		}
		if at != nil {
			at("attach:claimed")
		}
		if err := writeRecord(m.dir(), r); err != nil {
			return fmt.Errorf("attach to machine %s: %w", m.name, err)
		}
		if at != nil {
			at("attach:written")
		}
		if running {
			// Claimed and recorded first: the file is never in a guest
			// that no record names. A failed plug puts the record back.
			ci, pm := slotOf(r, slot)
			bus := r.Hardware.Storage[ci].Bus
			if err := plug.PlugDrive(ctx, m.ref(r), ci, bus, pm.dev.DeviceType, m.l.driveOf(pm)); err != nil {
				if werr := writeRecord(m.dir(), old); werr != nil {
					err = fmt.Errorf("%w; and the record still names it: %w", err, werr)
				}
				return fmt.Errorf("attach to machine %s: %w", m.name, err)
			}
		}
		m.l.log.Debug("attached", "machine", m.name, "what", a.String(), "slot", slot.String(), "hot", running)
		return nil
	})
	return slot, err
}

// hotSlot decides where a running machine takes a: a disk in a free slot
// of a virtio controller (one named VolumesController is added when no
// virtio controller has room), an ISO in an empty dvd drive — not the one
// holding the cloud-init seed (the first empty one, when seeded). A slot
// given must be such a slot.
func hotSlot(h *spec.Hardware, a Attachment, seeded bool) (Attachment, error) {
	dvd := a.ISO != ""
	var seed *spec.MountPoint
	if seeded {
		for _, c := range h.Storage {
			for _, sl := range h.Slots(c) {
				if seed == nil && sl.Kind == spec.DeviceDVD && !sl.Device.Media() {
					seed = &spec.MountPoint{Controller: c.Name, Slot: sl.Index}
				}
			}
		}
	}
	fits := func(c spec.Controller, i int) bool {
		if bp := h.BootMountPoint; bp != nil && bp.Controller == c.Name && bp.Slot == i {
			return false
		}
		var d *spec.Device
		if i < len(c.Devices) {
			d = c.Devices[i]
		}
		if dvd {
			return d != nil && d.DeviceType == spec.DeviceDVD && !d.Media() && (seed == nil || *seed != spec.MountPoint{Controller: c.Name, Slot: i})
		}
		return c.Bus == spec.BusVirtio && d == nil && i < spec.SlotCount(c.Bus)
	}
	if a.Slot != nil {
		c, ok := h.Controller(a.Slot.Controller)
		if ok && !fits(c, a.Slot.Slot) {
			what := "a disk goes to a free slot of a virtio controller"
			if dvd {
				what = "an ISO goes into an empty dvd drive"
			}
			return a, fmt.Errorf("%w: slot %s: in a running machine %s; power it down to use this slot", ErrInvalid, a.Slot, what)
		}
		return a, nil // place explains an unknown controller
	}
	for _, c := range h.Storage {
		n := len(c.Devices)
		if !dvd {
			n = spec.SlotCount(c.Bus)
		}
		for i := range n {
			if fits(c, i) {
				a.Slot = &spec.MountPoint{Controller: c.Name, Slot: i}
				return a, nil
			}
		}
	}
	if dvd {
		return a, fmt.Errorf("%w: the running machine has no empty dvd drive for the ISO; power it down to add one", ErrInvalid)
	}
	if _, ok := h.Controller(VolumesController); ok {
		return a, fmt.Errorf("%w: every virtio slot of the running machine is taken; detach something first", ErrInvalid)
	}
	h.Storage = append(h.Storage, spec.Controller{Name: VolumesController, Bus: spec.BusVirtio})
	a.Slot = &spec.MountPoint{Controller: VolumesController, Slot: 0}
	return a, nil
}

// slotOf finds the controller index and the file of slot in r.
func slotOf(r record, slot spec.MountPoint) (int, placedMedia) {
	for ci, c := range r.Hardware.Storage {
		if c.Name == slot.Controller && slot.Slot < len(c.Devices) {
			return ci, placedMedia{at: slot, dev: c.Devices[slot.Slot]}
		}
	}
	return -1, placedMedia{}
}

// Detach implements Machine: the volume, disk or ISO a names (or what is
// in a.Slot) leaves a powered-off machine; the file itself is kept.
func (m *localMachine) Detach(ctx context.Context, a Attachment) (spec.MountPoint, error) {
	if a.Volume == "" && a.Disk == "" && a.ISO == "" && a.Slot == nil {
		return spec.MountPoint{}, fmt.Errorf("%w: detach: name a volume, a disk, an ISO or a slot", ErrInvalid)
	}
	var at spec.MountPoint
	err := m.locked(ctx, func(r record, st State) error {
		if err := m.need("detach from", st, PoweredOff, Aborted, Running, Paused); err != nil {
			return err
		}
		old := r.Hardware.Clone()
		var err error
		if at, err = unplace(&r.Hardware, a); err != nil {
			return fmt.Errorf("detach from machine %s: %w", m.name, err)
		}
		if st == Running || st == Paused {
			d, err := m.drv(r)
			if err != nil {
				return err
			}
			plug, ok := d.(driver.HotPlugger)
			if !ok {
				return fmt.Errorf("%w: the %s driver cannot change a running machine's disks: power %s down first", ErrUnsupported, d.Info().Name, m.name)
			}
			// Unplugged first: the record names the file (and keeps it
			// claimed) until the guest has let it go.
			ci, pm := slotOf(record{Hardware: old}, at)
			bus := old.Storage[ci].Bus
			if pm.dev.DeviceType == spec.DeviceHardDisk && bus != spec.BusVirtio {
				return &StateError{Machine: m.name, Op: "detach a disk on a " + bus + " controller from", State: st, Needs: []State{PoweredOff}}
			}
			if err := plug.UnplugDrive(ctx, m.ref(r), ci, bus, pm.dev.DeviceType, m.l.driveOf(pm)); err != nil {
				return fmt.Errorf("detach from machine %s: %w", m.name, err)
			}
		}
		if err := writeRecord(m.dir(), r); err != nil {
			return fmt.Errorf("detach from machine %s: %w", m.name, err)
		}
		m.l.log.Debug("detached", "machine", m.name, "what", a.String(), "slot", at.String())
		return nil
	})
	return at, err
}

// mediaSlots lists the slots of r that hold a file.
func mediaSlots(r record) []spec.MountPoint {
	var out []spec.MountPoint
	for _, pm := range r.media() {
		out = append(out, pm.at)
	}
	return out
}

// carryMedia puts the files old's slots hold into the same slots of h (a
// machine's new hardware), which must have them free; h's own files are
// claimed by the caller.
func carryMedia(old record, h *spec.Hardware) error {
	for _, pm := range old.media() {
		if c, ok := h.Controller(pm.at.Controller); ok && pm.at.Slot < len(c.Devices) {
			if d := c.Devices[pm.at.Slot]; d != nil && d.DeviceType == pm.dev.DeviceType && d.Volume == pm.dev.Volume && d.Location == pm.dev.Location {
				d.Format = pm.dev.Format
				continue // the new hardware names it in the same slot
			}
		}
		if _, ok := h.Controller(pm.at.Controller); !ok && pm.at.Controller == VolumesController {
			h.Storage = append(h.Storage, spec.Controller{Name: VolumesController, Bus: spec.BusVirtio})
		}
		a := Attachment{Volume: pm.dev.Volume, Slot: &pm.at}
		if pm.dev.DeviceType == spec.DeviceDVD {
			a.ISO = pm.dev.Location
		} else if pm.dev.Volume == "" {
			a.Disk = pm.dev.Location
		}
		if _, err := place(h, a); err != nil {
			return fmt.Errorf("the new hardware cannot keep %s in its slot (%w); detach it first", describeDevice(pm.dev), err)
		}
		// place made a new device: keep the recorded format.
		for ci := range h.Storage {
			if h.Storage[ci].Name == pm.at.Controller {
				h.Storage[ci].Devices[pm.at.Slot].Format = pm.dev.Format
			}
		}
	}
	return nil
}
