package vmfest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vmfest/vmfest/disk"
	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Finding is one thing Doctor found in the state directory.
type Finding struct {
	// Kind is partial-create, partial-destroy, partial-model,
	// partial-network, partial-volume, temp-file, stale-stopping,
	// corrupt-record, corrupt-volume, missing-disk, missing-volume (a slot
	// names a volume that does not exist), missing-media (a slot names a
	// disk or an ISO that is gone), shared-volume (two machines' slots
	// name one volume), aborted, reidentify-pending (a clone whose guest
	// may still have its source's identity) or orphan-allocation (a
	// network address held for a machine that does not exist).
	Kind string `json:"kind"`
	// Machine is the machine concerned, if any.
	Machine string `json:"machine,omitempty"`
	// Path is the file or directory concerned.
	Path string `json:"path"`
	// Detail says what is wrong and what to do.
	Detail string `json:"detail"`
	// Fixed is true when Doctor repaired it.
	Fixed bool `json:"fixed"`
}

// Doctor checks the state directory for what a crash can leave behind and,
// with fix, repairs it: half-created or half-destroyed machines (never in
// use: their locks are free), half-created or half-removed volumes,
// temporary files, stale stop marks. It reports but never deletes what may
// be the user's: a corrupt machine.json or volume.json, a missing disk, a
// slot whose volume, disk or ISO is gone, an aborted machine. Safe to run
// while other processes use the directory.
func (l *Local) Doctor(ctx context.Context, fix bool) ([]Finding, error) {
	findings, err := l.sweepPartial(fix)
	if err != nil {
		return findings, err
	}
	swept, err := l.images.Sweep(fix)
	if err != nil {
		return findings, err
	}
	for _, p := range swept {
		findings = append(findings, Finding{Kind: "partial-model", Path: p, Detail: "left by an interrupted model install or removal", Fixed: fix})
	}
	if nm, err := l.networks(); err == nil {
		swept, err := nm.Sweep(fix)
		if err != nil {
			return findings, err
		}
		for _, p := range swept {
			findings = append(findings, Finding{Kind: "partial-network", Path: p, Detail: "left by an interrupted network create or removal", Fixed: fix})
		}
	}
	names, err := l.machineNames()
	if err != nil {
		return findings, err
	}
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return findings, err
		}
		findings = append(findings, l.checkMachine(ctx, n, fix)...)
	}
	findings = append(findings, l.checkVolumes(names)...)
	return findings, nil
}

// sweepPartial removes the hidden directories a crashed Instance, Destroy,
// CreateVolume or RemoveVolume left under machines/ and volumes/. It is
// cheap (a directory read each) and runs whenever a Local server opens the
// state directory.
func (l *Local) sweepPartial(fix bool) ([]Finding, error) {
	out, err := l.sweepMachines(fix)
	if err != nil {
		return out, err
	}
	vols, err := l.sweepVolumes(fix)
	return append(out, vols...), err
}

// sweepVolumes removes volumes/.creating-* and volumes/.removing-*: a
// volume being made, or one already taken out of its name. Creates and
// removals hold volumes/ shared while their hidden directories exist;
// holding it exclusively means none is in flight.
func (l *Local) sweepVolumes(fix bool) ([]Finding, error) {
	dir := l.home.VolumesPath()
	lk, ok, err := store.TryLockDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sweep volumes: %w", err)
	}
	if !ok {
		return nil, nil // operations in flight: sweep another time
	}
	defer lk.Unlock()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("sweep volumes: %w", err)
	}
	var out []Finding
	for _, e := range entries {
		var detail string
		switch name := e.Name(); {
		case strings.HasPrefix(name, ".creating-"):
			detail = "a volume whose create was interrupted (never usable)"
		case strings.HasPrefix(name, ".removing-"):
			detail = "a volume whose removal was interrupted (its name was already free)"
		default:
			continue
		}
		f := Finding{Kind: "partial-volume", Path: filepath.Join(dir, e.Name()), Detail: detail}
		if fix {
			if err := os.RemoveAll(f.Path); err != nil {
				f.Detail += ": " + err.Error()
			} else {
				f.Fixed = true
			}
		}
		out = append(out, f)
	}
	return out, nil
}

// checkVolumes reports, without changing anything, volume directories
// that are not whole (no readable volume.json, or no disk), and volumes
// that the slots of more than one of the machines named hold.
func (l *Local) checkVolumes(machines []string) []Finding {
	var out []Finding
	entries, _ := os.ReadDir(l.home.VolumesPath())
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(l.home.VolumesPath(), name)
		if !e.IsDir() {
			out = append(out, Finding{Kind: "corrupt-volume", Path: path, Detail: "not a volume directory; move it out of " + l.home.VolumesPath()})
			continue
		}
		if _, err := l.readVolume(name); err != nil {
			out = append(out, Finding{Kind: "corrupt-volume", Path: filepath.Join(path, store.VolumeFile),
				Detail: fmt.Sprintf("volume %s: %s; restore %s or remove the directory by hand", name, oneLineErr(err), store.VolumeFile)})
			continue
		}
		if _, err := os.Stat(l.home.VolumeDisk(name)); err != nil {
			out = append(out, Finding{Kind: "corrupt-volume", Path: l.home.VolumeDisk(name),
				Detail: fmt.Sprintf("volume %s has no disk: %s; remove the volume (vmfest volume rm %s)", name, oneLineErr(err), name)})
		}
	}
	held := map[string][]string{}
	for _, n := range machines {
		r, err := l.readRecord(n)
		if err != nil {
			continue // reported as corrupt-record
		}
		for _, pm := range r.media() {
			if v := pm.dev.Volume; v != "" {
				held[v] = append(held[v], n)
			}
		}
	}
	for _, v := range slices.Sorted(maps.Keys(held)) {
		if ms := held[v]; len(ms) > 1 {
			out = append(out, Finding{Kind: "shared-volume", Path: l.home.VolumePath(v),
				Detail: fmt.Sprintf("volume %s is in the slots of machines %s: a volume is one machine's at a time; detach it from all but one", v, strings.Join(ms, ", "))})
		}
	}
	return out
}

// sweepMachines removes the hidden directories a crashed Instance or
// Destroy left under machines/.
func (l *Local) sweepMachines(fix bool) ([]Finding, error) {
	// Creates and destroys hold machines/ shared while their hidden
	// directories exist; holding it exclusively means none is in flight.
	lk, ok, err := store.TryLockDir(l.home.MachinesPath())
	if err != nil {
		return nil, fmt.Errorf("sweep machines: %w", err)
	}
	if !ok {
		return nil, nil // operations in flight: sweep another time
	}
	defer lk.Unlock()
	entries, err := os.ReadDir(l.home.MachinesPath())
	if err != nil {
		return nil, fmt.Errorf("sweep machines: %w", err)
	}
	var out []Finding
	for _, e := range entries {
		name := e.Name()
		var kind string
		path := filepath.Join(l.home.MachinesPath(), name)
		switch {
		case strings.HasPrefix(name, ".creating-"):
			kind = "partial-create"
		case strings.HasPrefix(name, ".destroying-"):
			kind = "partial-destroy"
		case strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-"):
			kind = "temp-file"
		default:
			continue
		}
		f := Finding{Kind: kind, Path: path, Detail: "left by an interrupted operation"}
		if fix {
			if err := os.RemoveAll(path); err != nil {
				f.Detail += ": " + err.Error()
			} else {
				f.Fixed = true
			}
		}
		out = append(out, f)
	}
	out = append(out, l.sweepAllocations(fix)...)
	return out, nil
}

func (l *Local) checkMachine(ctx context.Context, name string, fix bool) []Finding {
	dir := l.home.MachinePath(name)
	lk, ok, err := store.TryLockDir(dir)
	if err != nil || !ok {
		return nil // gone meanwhile, or busy: nothing to judge now
	}
	defer lk.Unlock()
	var out []Finding
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".tmp-") {
			f := Finding{Kind: "temp-file", Machine: name, Path: filepath.Join(dir, e.Name()), Detail: "left by an interrupted write"}
			if fix && os.Remove(f.Path) == nil {
				f.Fixed = true
			}
			out = append(out, f)
		}
	}
	out = append(out, sweepTemplates(name, dir, fix)...)
	r, err := l.readRecord(name)
	if err != nil {
		return append(out, Finding{Kind: "corrupt-record", Machine: name, Path: filepath.Join(dir, store.MachineFile),
			Detail: oneLineErr(err) + "; restore it or remove the machine directory by hand"})
	}
	if _, err := os.Stat(r.disk(dir)); err != nil {
		out = append(out, Finding{Kind: "missing-disk", Machine: name, Path: r.disk(dir), Detail: "the machine's disk is missing; destroy the machine"})
	} else if r.Overlay {
		out = append(out, l.checkDiskSize(ctx, name, dir, r, fix)...)
	}
	out = append(out, l.checkMedia(name, r)...)
	if r.UserData {
		if _, err := os.Stat(filepath.Join(dir, store.UserDataFile)); err != nil {
			out = append(out, Finding{Kind: "missing-user-data", Machine: name, Path: filepath.Join(dir, store.UserDataFile),
				Detail: "the machine's user-data is missing, so it cannot start; destroy and recreate it with its user-data"})
		}
	}
	st, err := (&localMachine{l: l, name: name}).status(ctx, r)
	if err == nil && !runs(st.State) {
		if _, err := os.Stat(filepath.Join(dir, store.StoppingFile)); err == nil {
			f := Finding{Kind: "stale-stopping", Machine: name, Path: filepath.Join(dir, store.StoppingFile), Detail: "stop mark of a finished stop"}
			if fix {
				clearStopping(dir)
				f.Fixed = true
			}
			out = append(out, f)
		}
		if st.State == Aborted {
			out = append(out, Finding{Kind: "aborted", Machine: name, Path: dir, Detail: "its hypervisor died without a clean power-off; start it again or power it down"})
		}
	}
	if r.Reidentify != nil {
		out = append(out, Finding{Kind: "reidentify-pending", Machine: name, Path: filepath.Join(dir, store.MachineFile),
			Detail: fmt.Sprintf("a clone of %s whose guest may still have %s's MACs, address and host name: start it from its saved state (which retries), or power it down and start it (a fresh boot takes its own)", r.Reidentify.Source, r.Reidentify.Source)})
	}
	if err == nil && runs(st.State) {
		out = append(out, l.checkTaps(ctx, name, r, fix)...)
	}
	return out
}

// checkMedia reports the slots of the machine's record whose volume, disk
// or ISO is gone: the machine cannot start until it is detached or put
// back.
func (l *Local) checkMedia(name string, r record) []Finding {
	var out []Finding
	for _, pm := range r.media() {
		d := pm.dev
		if d.Volume != "" {
			if _, err := os.Stat(filepath.Join(l.home.VolumePath(d.Volume), store.VolumeFile)); errors.Is(err, fs.ErrNotExist) {
				out = append(out, Finding{Kind: "missing-volume", Machine: name, Path: l.home.VolumePath(d.Volume),
					Detail: fmt.Sprintf("storage %s holds volume %s, which does not exist, so the machine cannot start; detach it (vmfest detach %s %s)", pm.at, d.Volume, name, d.Volume)})
			}
			continue
		}
		if _, err := os.Stat(d.Location); errors.Is(err, fs.ErrNotExist) {
			out = append(out, Finding{Kind: "missing-media", Machine: name, Path: d.Location,
				Detail: fmt.Sprintf("storage %s holds %s, which is gone, so the machine cannot start; put the file back or detach it", pm.at, describeDevice(d))})
		}
	}
	return out
}

// checkTaps finds the taps of a running machine that are in no bridge: a
// start killed between launching the machine and plugging its taps in
// leaves them so, and the guest is cut off from its network. Fixing plugs
// them in.
func (l *Local) checkTaps(ctx context.Context, name string, r record, fix bool) []Finding {
	var out []Finding
	for i, n := range r.Hardware.Network {
		netName, _ := network.Of(n)
		if netName == "" && n.AttachmentType != spec.AttachBridged {
			continue
		}
		tap := network.TapName(r.Net.ID, i)
		br, err := network.TapBridge(tap)
		if err != nil || br != "" {
			continue // no tap (another driver, or gone meanwhile), or plugged
		}
		f := Finding{Kind: "unplugged-tap", Machine: name, Path: tap,
			Detail: fmt.Sprintf("network[%d]: tap %s is in no bridge (a start was interrupted); the guest is cut off from %s", i, tap, describeNIC(n))}
		if fix {
			nm, err := l.networks()
			if err == nil {
				err = nm.Replug(ctx, tap, netName, n.BridgedInterface)
			}
			if err != nil {
				f.Detail += ": " + oneLineErr(err)
			} else {
				f.Fixed = true
			}
		}
		out = append(out, f)
	}
	return out
}

func oneLineErr(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// sweepAllocations releases the network allocations no machine owns any
// more: a create or destroy killed half-way leaves them. The caller holds
// machines/ exclusively, so no create or destroy is in flight. Nothing is
// released while a machine record cannot be read (its owner id is
// unknown).
func (l *Local) sweepAllocations(fix bool) []Finding {
	nm, err := l.networks()
	if err != nil {
		return nil
	}
	names, err := l.machineNames()
	if err != nil {
		return nil
	}
	owners := map[string]bool{}
	for _, n := range names {
		r, err := l.readRecord(n)
		if err != nil {
			return nil
		}
		owners[r.Net.ID] = true
	}
	orphans, err := nm.Orphans(owners)
	if err != nil {
		return nil
	}
	var out []Finding
	for _, a := range orphans {
		f := Finding{Kind: "orphan-allocation", Machine: a.Machine, Path: nm.Path(a.Network),
			Detail: fmt.Sprintf("network %s holds %s for machine %s, which does not exist (an interrupted create or destroy)", a.Network, a.IP, a.Machine)}
		if fix {
			if err := l.releaseNetworks(context.Background(), record{Net: netRecord{ID: a.Owner}}); err != nil {
				f.Detail += ": " + err.Error()
			} else {
				f.Fixed = true
			}
		}
		out = append(out, f)
	}
	return out
}

// checkDiskSize finds an overlay larger than its record says: a Set killed
// between growing the disk and writing the record leaves it so. Fixing
// records the size the disk has (it never shrinks).
func (l *Local) checkDiskSize(ctx context.Context, name, dir string, r record, fix bool) []Finding {
	size, err := disk.New(l.cfg.QEMUImg).VirtualSize(ctx, r.disk(dir), spec.DiskFormatQCOW2)
	if err != nil {
		return nil // Doctor's other checks, or the next start, say why
	}
	recorded := int64(r.Hardware.DiskSize)
	if recorded == 0 {
		base, err := disk.New(l.cfg.QEMUImg).VirtualSize(ctx, r.Image.Location, r.BaseFormat)
		if err != nil || r.BaseFormat == "" {
			return nil
		}
		recorded = base
	}
	if size <= recorded {
		return nil
	}
	f := Finding{Kind: "disk-size", Machine: name, Path: r.disk(dir),
		Detail: fmt.Sprintf("the disk is %s but the machine's record says %s (a resize was interrupted)", spec.Size(size), spec.Size(recorded))}
	if fix {
		r.Hardware.DiskSize = spec.Size(size)
		if err := writeRecord(dir, r); err != nil {
			f.Detail += ": " + oneLineErr(err)
		} else {
			f.Fixed = true
		}
	}
	return []Finding{f}
}

// sweepTemplates finds, in the machine directory dir (its lock held), a
// memory template a crash left half made, and a memory template or saved
// RAM file whose saved state is gone (a crash in its discard).
func sweepTemplates(name, dir string, fix bool) []Finding {
	var out []Finding
	add := func(kind, path, detail string) {
		f := Finding{Kind: kind, Machine: name, Path: path, Detail: detail}
		if fix && os.RemoveAll(path) == nil {
			f.Fixed = true
		}
		out = append(out, f)
	}
	partial, _ := filepath.Glob(filepath.Join(dir, store.TemplateTempPrefix+"*"))
	for _, p := range partial {
		add("partial-template", p, "a memory template left half made by an interrupted clone")
	}
	if hasSavedState(dir) {
		return out
	}
	if _, err := os.Lstat(filepath.Join(dir, store.TemplateDir)); err == nil {
		add("stale-template", filepath.Join(dir, store.TemplateDir), "a memory template whose saved state is gone")
	}
	if hasSavedMemory(dir) {
		add("stale-template", savedMemoryPath(dir), "a saved RAM file whose saved state is gone")
	}
	return out
}
