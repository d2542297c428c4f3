package vmfest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmfest/vmfest/disk"
	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Finding is one thing Doctor found in the state directory.
type Finding struct {
	// Kind is partial-create, partial-destroy, partial-model,
	// partial-network, temp-file, stale-stopping,
	// corrupt-record, missing-disk, aborted or orphan-allocation (a network
	// address held for a machine that does not exist).
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
// use: their locks are free), temporary files, stale stop marks. It reports
// but never deletes what may be the user's: a corrupt machine.json, a
// missing disk, an aborted machine. Safe to run while other processes use
// the directory.
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
	return findings, nil
}

// sweepPartial removes the hidden directories a crashed Instance or Destroy
// left under machines/. It is cheap (one directory read) and runs whenever
// a Local server opens the state directory.
func (l *Local) sweepPartial(fix bool) ([]Finding, error) {
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
	if err == nil && runs(st.State) {
		out = append(out, l.checkTaps(ctx, name, r, fix)...)
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
