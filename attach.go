package vmfest

import (
	"context"
	"fmt"

	"github.com/vmfest/vmfest/spec"
)

// Attach implements Machine: a powered-off machine gets a volume, a disk or
// an ISO in a storage slot. The file is claimed as at create (a volume or
// a disk is one machine's at a time) and the record is rewritten in one
// atomic write, so a crash leaves the machine with or without it.
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
		if err := m.need("attach to", st, PoweredOff, Aborted); err != nil {
			return err
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
		m.l.log.Debug("attached", "machine", m.name, "what", a.String(), "slot", slot.String())
		return nil
	})
	return slot, err
}

// Detach implements Machine: the volume, disk or ISO a names (or what is
// in a.Slot) leaves a powered-off machine; the file itself is kept.
func (m *localMachine) Detach(ctx context.Context, a Attachment) (spec.MountPoint, error) {
	if a.Volume == "" && a.Disk == "" && a.ISO == "" && a.Slot == nil {
		return spec.MountPoint{}, fmt.Errorf("%w: detach: name a volume, a disk, an ISO or a slot", ErrInvalid)
	}
	var at spec.MountPoint
	err := m.locked(ctx, func(r record, st State) error {
		if err := m.need("detach from", st, PoweredOff, Aborted); err != nil {
			return err
		}
		var err error
		if at, err = unplace(&r.Hardware, a); err != nil {
			return fmt.Errorf("detach from machine %s: %w", m.name, err)
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
