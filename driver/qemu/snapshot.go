package qemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/store"
)

var _ driver.Snapshotter = (*Driver)(nil)

// Snapshots of a running machine are QMP jobs (snapshot-save,
// snapshot-load, snapshot-delete: QEMU 6.0 on) on the qcow2 node of the
// machine's disk, which keeps the memory state too; those of a powered-off
// machine are qemu-img snapshot on the file. Either way a snapshot lives
// in the disk's own snapshot table, whose update is qcow2's commit point:
// a snapshot is whole or absent after any crash.

// Snapshots implements driver.Snapshotter with qemu-img info, which reads
// the snapshot table of a disk in use too (--force-share).
func (d *Driver) Snapshots(ctx context.Context, m driver.Machine, disk string, running bool) ([]driver.Snapshot, error) {
	if !running {
		if err := Settle(ctx, m.Dir); err != nil {
			return nil, err
		}
	}
	out, err := d.qemuImg(ctx, "info", "--output=json", "--force-share", diskOnly(disk))
	if err != nil {
		return nil, err
	}
	var in struct {
		Snapshots []struct {
			Name       string `json:"name"`
			DateSec    int64  `json:"date-sec"`
			DateNsec   int64  `json:"date-nsec"`
			VMClockSec int64  `json:"vm-clock-sec"`
			VMClockNs  int64  `json:"vm-clock-nsec"`
			StateSize  int64  `json:"vm-state-size"`
		} `json:"snapshots"`
	}
	if err := json.Unmarshal(out, &in); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", disk, err)
	}
	snaps := make([]driver.Snapshot, len(in.Snapshots))
	for i, s := range in.Snapshots {
		snaps[i] = driver.Snapshot{
			Tag:        s.Name,
			Created:    time.Unix(s.DateSec, s.DateNsec).UTC(),
			MemorySize: s.StateSize,
			VMClock:    time.Duration(s.VMClockSec)*time.Second + time.Duration(s.VMClockNs),
		}
	}
	return snaps, nil
}

// snapshotPCI is the file in the machine directory dir that keeps the PCI
// addresses of the devices (savedHeader.PCI) when the memory snapshot tag
// was taken: a start from it pins them (Config.PCI), as a resume from a
// saved state does, since a disk plugged or unplugged while the machine
// ran moves devices. A snapshot without one (of an older vmfest, or of a
// powered-off machine) starts with the devices where they are put.
func snapshotPCI(dir, tag string) (string, error) {
	if tag == "" || filepath.Base(tag) != tag || strings.HasPrefix(tag, ".") {
		return "", fmt.Errorf("snapshot %q: not a name", tag)
	}
	return filepath.Join(dir, store.SnapshotPCIFile(tag)), nil
}

// readSnapshotPCI reads the PCI addresses kept for the snapshot tag; none
// when it has no file.
func readSnapshotPCI(dir, tag string) (map[string]string, error) {
	p, err := snapshotPCI(dir, tag)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", tag, err)
	}
	var pci map[string]string
	if err := json.Unmarshal(data, &pci); err != nil {
		return nil, fmt.Errorf("snapshot %s: %s: %w", tag, p, err)
	}
	return pci, nil
}

// SaveSnapshot implements driver.Snapshotter. Of a running machine it
// first writes the devices' PCI addresses beside the disk (snapshotPCI).
// (Killed QEMUs and vmfests during a snapshot: TestSnapshotCrash.)
func (d *Driver) SaveSnapshot(ctx context.Context, m driver.Machine, disk, tag string, running bool) error {
	p, err := snapshotPCI(m.Dir, tag)
	if err != nil {
		return err
	}
	if !running {
		if err := Settle(ctx, m.Dir); err != nil {
			return err
		}
		// A file of an earlier memory snapshot of that name, whose
		// job's end was never seen, is not this one's.
		os.Remove(p)
		_, err := d.qemuImg(ctx, "snapshot", "-c", tag, diskOnly(disk))
		return err
	}
	q, err := DialQMP(ctx, Config{Dir: m.Dir}.Path(QMPSocket))
	if err != nil {
		return err
	}
	pci, err := pciAddresses(ctx, q)
	q.Close()
	if err != nil {
		return err
	}
	data, err := json.Marshal(pci)
	if err != nil {
		return err
	}
	if err := store.WriteFileAtomic(p, data, 0o600); err != nil {
		return fmt.Errorf("snapshot %s: %w", tag, err)
	}
	// On an error the file stays: the job may have ended whole in a QEMU
	// that is gone (a file without its snapshot is never read; the next
	// snapshot of that name writes its own).
	return d.snapshotJob(ctx, m, disk, "snapshot-save", tag, true)
}

// LoadSnapshot implements driver.Snapshotter.
func (d *Driver) LoadSnapshot(ctx context.Context, m driver.Machine, disk, tag string, running bool) error {
	if !running {
		if err := Settle(ctx, m.Dir); err != nil {
			return err
		}
		_, err := d.qemuImg(ctx, "snapshot", "-a", tag, diskOnly(disk))
		return err
	}
	return d.snapshotJob(ctx, m, disk, "snapshot-load", tag, true)
}

// DeleteSnapshot implements driver.Snapshotter; the snapshot's PCI file
// goes with it.
func (d *Driver) DeleteSnapshot(ctx context.Context, m driver.Machine, disk, tag string, running bool) error {
	var err error
	if !running {
		if err = Settle(ctx, m.Dir); err != nil {
			return err
		}
		_, err = d.qemuImg(ctx, "snapshot", "-d", tag, diskOnly(disk))
	} else {
		err = d.snapshotJob(ctx, m, disk, "snapshot-delete", tag, false)
	}
	if err != nil {
		return err
	}
	if p, perr := snapshotPCI(m.Dir, tag); perr == nil {
		os.Remove(p)
	}
	return nil
}

// snapshotJob runs one snapshot job on the qcow2 node whose file is disk
// and waits until it has concluded, bounded by ctx. withState: the node
// holds (or gives back) the memory state too. A job that outlives ctx is
// left to QEMU, which finishes or fails it whole.
func (d *Driver) snapshotJob(ctx context.Context, m driver.Machine, disk, command, tag string, withState bool) error {
	q, err := DialQMP(ctx, Config{Dir: m.Dir}.Path(QMPSocket))
	if err != nil {
		return err
	}
	defer q.Close()
	node, err := formatNode(ctx, q, disk)
	if err != nil {
		return err
	}
	var idb [6]byte
	rand.Read(idb[:])
	id := "vmfest-" + command + "-" + hex.EncodeToString(idb[:])
	args := map[string]any{"job-id": id, "tag": tag, "devices": []string{node}}
	if withState {
		args["vmstate"] = node
	}
	if _, err := q.Execute(ctx, command, args); err != nil {
		return err
	}
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		raw, err := q.Execute(ctx, "query-jobs", nil)
		if err != nil {
			return err
		}
		var jobs []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(raw, &jobs); err != nil {
			return fmt.Errorf("qmp query-jobs: %w", err)
		}
		for _, j := range jobs {
			if j.ID != id || j.Status != "concluded" {
				continue
			}
			q.Execute(ctx, "job-dismiss", map[string]string{"id": id})
			if j.Error != "" {
				return fmt.Errorf("%s %s: %s", command, tag, j.Error)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %s: %w", command, tag, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// formatNode returns the name of the qcow2 node whose image is the file
// disk.
func formatNode(ctx context.Context, q *QMP, disk string) (string, error) {
	raw, err := q.Execute(ctx, "query-named-block-nodes", map[string]bool{"flat": true})
	if err != nil {
		return "", err
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
		Driver   string `json:"drv"`
		File     string `json:"file"`
	}
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return "", fmt.Errorf("qmp query-named-block-nodes: %w", err)
	}
	for _, n := range nodes {
		if n.Driver == "qcow2" && n.File == disk {
			return n.NodeName, nil
		}
	}
	return "", fmt.Errorf("the machine has no qcow2 disk %s open", disk)
}

// diskOnly names the qcow2 file disk to qemu-img as itself alone: its
// format given, and no backing file opened (whatever its header names),
// which a snapshot of the file does not need.
func diskOnly(disk string) string {
	spec, _ := json.Marshal(map[string]any{
		"driver":  "qcow2",
		"file":    map[string]string{"driver": "file", "filename": disk},
		"backing": nil,
	})
	return "json:" + string(spec)
}

// qemuImg runs qemu-img and returns its stdout, or an error with its own
// message.
func (d *Driver) qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		msg := strings.TrimSpace(stderr.String())
		var ee *exec.ExitError
		if errors.As(err, &ee) && msg != "" {
			return nil, fmt.Errorf("qemu-img %s: %s", args[0], msg)
		}
		return nil, fmt.Errorf("qemu-img %s: %w", args[0], err)
	}
	return stdout.Bytes(), nil
}
