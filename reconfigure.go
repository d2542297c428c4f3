package vmfest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/vmfest/vmfest/disk"
	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Change is what Machine.Set changes of a powered-off machine. Hardware,
// when set, replaces its hardware (a model or a spec, resolved as at
// create); MemorySize, CPUCount and DiskSize are laid over the result. A
// zero field changes nothing.
type Change struct {
	Hardware   *Hardware
	MemorySize int
	CPUCount   int
	// DiskSize grows the machine's overlay; a disk never shrinks.
	DiskSize spec.Size
}

// Set implements Machine.
func (m *localMachine) Set(ctx context.Context, c Change) error {
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("change", st, PoweredOff); err != nil {
			return err
		}
		old := r
		if c.Hardware != nil {
			macs := r.Hardware.Network
			if err := m.l.resolveHardware(&r, *c.Hardware); err != nil {
				return err
			}
			if c.Hardware.Model == "" {
				r.HardwareModel = ""
			}
			// Keep each slot's MAC unless the new spec names one.
			for i := range r.Hardware.Network {
				if i < len(macs) && (c.Hardware.Spec == nil || i >= len(c.Hardware.Spec.Network) || c.Hardware.Spec.Network[i].MACAddress == "") {
					r.Hardware.Network[i].MACAddress = macs[i].MACAddress
				}
			}
			if err := sameNetworks(old.Hardware.Network, r.Hardware.Network); err != nil {
				return err
			}
			if r.Hardware.DiskSize == 0 {
				r.Hardware.DiskSize = old.Hardware.DiskSize
			}
			if err := carryMedia(old, &r.Hardware); err != nil {
				return fmt.Errorf("%w: storage: %w", ErrInvalid, err)
			}
			if len(r.media()) > 0 {
				if err := m.l.checkHardware(r.Hardware, r.Overlay); err != nil {
					return err
				}
				claim, err := m.l.lockDisks(ctx)
				if err != nil {
					return fmt.Errorf("change machine %s: %w", m.name, err)
				}
				defer claim.Unlock()
				if err := m.l.claimMedia(&r, mediaSlots(old)); err != nil {
					return err
				}
			}
		}
		if c.MemorySize != 0 || c.CPUCount != 0 || c.DiskSize != 0 {
			h := r.Hardware
			if c.MemorySize != 0 {
				h.MemorySize = c.MemorySize
			}
			if c.CPUCount != 0 {
				h.CPUCount = c.CPUCount
			}
			if c.DiskSize != 0 {
				h.DiskSize = c.DiskSize
			}
			if err := m.l.checkHardware(h, r.Overlay); err != nil {
				return err
			}
			if h.MemorySize != r.Hardware.MemorySize || h.CPUCount != r.Hardware.CPUCount {
				r.HardwareModel = ""
			}
			r.Hardware = h
		}
		if r.Hardware.DiskSize != 0 && r.Hardware.DiskSize != old.Hardware.DiskSize {
			if err := m.growDisk(ctx, r); err != nil {
				return err
			}
		}
		if err := writeRecord(m.dir(), r); err != nil {
			return fmt.Errorf("change machine %s: %w", m.name, err)
		}
		return nil
	})
}

// growDisk grows the machine's overlay to its hardware's disk-size.
func (m *localMachine) growDisk(ctx context.Context, r record) error {
	if !r.Overlay {
		return diskSizeError(r.Hardware.DiskSize, "cannot be given: the image is not immutable, so the machine's disk is the file itself, which vmfest does not resize")
	}
	err := disk.New(m.l.cfg.QEMUImg).Grow(ctx, filepath.Join(m.dir(), store.DiskFile), int64(r.Hardware.DiskSize))
	if errors.Is(err, disk.ErrTooSmall) {
		return diskSizeError(r.Hardware.DiskSize, "is smaller than the machine's disk; a disk only grows")
	}
	if err != nil {
		return fmt.Errorf("change machine %s: disk-size: %w", m.name, err)
	}
	return nil
}

// sameNetworks refuses a new hardware whose NICs are not on the networks
// the machine has a place on.
func sameNetworks(old, new []spec.NIC) error {
	if len(old) != len(new) {
		return fmt.Errorf("%w: network: the machine has %d NICs and the new hardware %d; changing a machine's NICs is not supported (recreate it)", ErrInvalid, len(old), len(new))
	}
	for i := range old {
		on, _ := network.Of(old[i])
		nn, _ := network.Of(new[i])
		if on != nn || old[i].AttachmentType != new[i].AttachmentType {
			return fmt.Errorf("%w: network[%d]: the new hardware puts it on %s instead of %s; changing a machine's NICs is not supported (recreate it)", ErrInvalid, i, describeNIC(new[i]), describeNIC(old[i]))
		}
	}
	return nil
}
