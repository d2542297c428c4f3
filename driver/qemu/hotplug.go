package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
)

var _ driver.HotPlugger = (*Driver)(nil)

// driveID is the name a start gives a slot's nodes and devices: nodes
// ctlN-S (and ctlN-S-file), device ctlN-S-dev.
func driveID(ctlIndex, slot int) string { return fmt.Sprintf("ctl%d-%d", ctlIndex, slot) }

// PlugDrive implements driver.HotPlugger: blockdev-add and device_add of a
// virtio-blk disk, or blockdev-change-medium of a dvd drive.
func (d *Driver) PlugDrive(ctx context.Context, m driver.Machine, ctlIndex int, bus, kind string, dr driver.Drive) error {
	q, err := DialQMP(ctx, Config{Dir: m.Dir}.Path(QMPSocket))
	if err != nil {
		return err
	}
	defer q.Close()
	id := driveID(ctlIndex, dr.Slot)
	if kind == spec.DeviceDVD {
		// An ISO: the medium of the slot's dvd drive.
		_, err := q.Execute(ctx, "blockdev-change-medium", map[string]any{
			"id": id + "-dev", "filename": dr.Disk.Path, "format": spec.DiskFormatRaw, "read-only-mode": "read-only",
		})
		return err
	}
	if bus != spec.BusVirtio {
		return fmt.Errorf("%w: storage %q slot %d: a running machine takes disks on a virtio controller only (a %s slot needs it powered off)", driver.ErrUnsupported, dr.Controller, dr.Slot, bus)
	}
	if err := dr.Disk.Validate(); err != nil {
		return err
	}
	args, err := blockdevArgs(dr.Disk, id)
	if err != nil {
		return err
	}
	var added []string
	undo := func() {
		for i := len(added) - 1; i >= 0; i-- {
			q.Execute(context.WithoutCancel(ctx), "blockdev-del", map[string]string{"node-name": added[i]})
		}
	}
	for i := 1; i < len(args); i += 2 {
		var node map[string]any
		if err := json.Unmarshal([]byte(args[i]), &node); err != nil {
			undo()
			return err
		}
		if _, err := q.Execute(ctx, "blockdev-add", node); err != nil {
			undo()
			return fmt.Errorf("hot-plug %s: %w", dr.Disk.Path, err)
		}
		added = append(added, node["node-name"].(string))
	}
	if _, err := q.Execute(ctx, "device_add", map[string]string{"driver": "virtio-blk-pci", "drive": id, "id": id + "-dev"}); err != nil {
		undo()
		return fmt.Errorf("hot-plug %s: %w", dr.Disk.Path, err)
	}
	return nil
}

// UnplugDrive implements driver.HotPlugger.
func (d *Driver) UnplugDrive(ctx context.Context, m driver.Machine, ctlIndex int, bus, kind string, dr driver.Drive) error {
	q, err := DialQMP(ctx, Config{Dir: m.Dir}.Path(QMPSocket))
	if err != nil {
		return err
	}
	defer q.Close()
	id := driveID(ctlIndex, dr.Slot)
	if kind == spec.DeviceDVD {
		_, err := q.Execute(ctx, "blockdev-remove-medium", map[string]string{"id": id + "-dev"})
		return err
	}
	if bus != spec.BusVirtio {
		return fmt.Errorf("%w: storage %q slot %d: a running machine lets go of disks on a virtio controller only (a %s slot needs it powered off)", driver.ErrUnsupported, dr.Controller, dr.Slot, bus)
	}
	if _, err := q.Execute(ctx, "device_del", map[string]string{"id": id + "-dev"}); err != nil {
		return fmt.Errorf("unplug %s: %w", dr.Disk.Path, err)
	}
	// The guest acknowledges the eject (ACPI); until then the device and
	// its nodes stay. Wait for the device to be gone.
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 250*time.Millisecond) {
		raw, err := q.Execute(ctx, "qom-list", map[string]string{"path": "/machine/peripheral"})
		if err != nil {
			return err
		}
		var props []struct{ Name string }
		if err := json.Unmarshal(raw, &props); err != nil {
			return fmt.Errorf("qom-list: %w", err)
		}
		present := false
		for _, p := range props {
			present = present || p.Name == id+"-dev"
		}
		if !present {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("unplug %s: the guest has not let the disk go: %w", dr.Disk.Path, ctx.Err())
		case <-time.After(wait):
		}
	}
	// The device's removal drops the format node QEMU made for it with
	// device_del only for -drive; blockdev nodes are deleted here, top
	// first. The device leaves the QOM tree before it lets go of its
	// block backend (that happens when the object is finalised, a moment
	// later), so a node still in use is asked again until it goes: a node
	// left behind would make the next hot-plug of this slot fail with
	// "Duplicate nodes".
	for _, node := range []string{id, id + "-file"} {
		if err := deleteNode(ctx, q, node); err != nil {
			return fmt.Errorf("unplug %s: %w", dr.Disk.Path, err)
		}
	}
	return nil
}

// nodeBusyWait bounds how long deleteNode waits for a device's block
// backend to let go of its node.
const nodeBusyWait = 10 * time.Second

// deleteNode deletes the block node named node (blockdev-del), asking
// again for up to nodeBusyWait while QEMU says it is in use; a node that
// is not there is deleted already.
func deleteNode(ctx context.Context, q *QMP, node string) error {
	ctx, cancel := context.WithTimeout(ctx, nodeBusyWait)
	defer cancel()
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 250*time.Millisecond) {
		_, err := q.Execute(ctx, "blockdev-del", map[string]string{"node-name": node})
		if err == nil || strings.Contains(err.Error(), "Failed to find node") {
			return nil
		}
		var qe *QMPError
		if !errors.As(err, &qe) {
			return fmt.Errorf("blockdev-del %s: %w", node, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("blockdev-del %s: still in use (%v): %w", node, err, ctx.Err())
		case <-time.After(wait):
		}
	}
}
