package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/vmfest/vmfest/disk"
	"github.com/vmfest/vmfest/driver"
)

var _ driver.Templater = (*Driver)(nil)

// A memory template is a saved state split in two: the guest's RAM as a
// plain file (what memory-backend-file maps) and the rest, a saved-state
// file whose header says SharedMemory and whose stream was written with
// x-ignore-shared, so it holds only device state and a few small RAM
// blocks (firmware, option ROMs). A machine started from it maps the RAM
// file private (share=off): the guest reads the page cache's pages, shared
// with every other machine started from the same file, and gets a copy of
// a page only when it writes it. The file is never written.
//
// QEMU 7.2 opens a memory-backend-file's file read-write even for a
// private mapping (read-only=on would make the guest's RAM read-only; 8.2's
// rom=off lifts that), so the files are 0400 only where QEMU runs with the
// right to override a file's mode (root); for another user they stay 0600,
// its own. Either way a private mapping's writes never reach the file.

// templateMode is the mode a template's files get once written.
func templateMode() os.FileMode {
	if os.Geteuid() == 0 {
		return 0o400
	}
	return 0o600
}

// Template implements driver.Templater: a QEMU (in the scratch directory
// s.Dir) loads the full saved state s.Incoming into RAM that is the new
// file ram mapped shared, its CPUs never started and its disks read-only;
// it then writes its state without that RAM (x-ignore-shared) to the new
// file state and quits. Both files are synced and made read-only
// (templateMode).
func (d *Driver) Template(ctx context.Context, s driver.StartSpec, ram, state string) (err error) {
	if s.Incoming == "" {
		return errors.New("memory template: no saved state given")
	}
	if s.MemoryTemplate != "" {
		return errors.New("memory template: a template's state is not a saved state to make one from")
	}
	accel, _, err := ChooseAccel(d.opts.Accel, *d.opts.Host)
	if err != nil {
		return err
	}
	in, h, err := openIncoming(s.Incoming)
	if err != nil {
		return err
	}
	defer in.Close()
	if h.SharedMemory {
		return fmt.Errorf("memory template: saved state %s is a template's already", s.Incoming)
	}
	rf, err := os.OpenFile(ram, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("memory template: %w", err)
	}
	defer rf.Close()
	sf, err := os.OpenFile(state, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		os.Remove(ram)
		return fmt.Errorf("memory template: %w", err)
	}
	defer sf.Close()
	launched := false
	defer func() {
		if err == nil {
			return
		}
		if launched {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			Kill(s.Dir)
			WaitExit(cctx, s.Dir)
			Clean(cctx, s.Dir)
			cancel()
		}
		os.Remove(ram)
		os.Remove(state)
		err = fmt.Errorf("memory template: %w", err)
	}()
	cfg := d.config(s, accel)
	cfg.Incoming, cfg.MemoryFile, cfg.MemoryShared, cfg.Template, cfg.PCI = in, ram, true, true, h.PCI
	if cfg.Scratch, err = d.scratchDisk(ctx, s); err != nil {
		return err
	}
	if err := Start(ctx, cfg); err != nil {
		return err
	}
	launched = true
	if err := waitIncoming(ctx, s.Dir); err != nil {
		return err
	}
	if err := writeSavedHeader(sf, savedHeader{State: h.State, Saved: h.Saved, SharedMemory: true, PCI: h.PCI}); err != nil {
		return err
	}
	socket := cfg.Path(QMPSocket)
	q, err := DialQMP(ctx, socket)
	if err != nil {
		return err
	}
	err = migrateTo(ctx, q, sf, true)
	q.Close()
	if err != nil {
		return err
	}
	if err := waitMigrated(ctx, socket); err != nil {
		return err
	}
	if err := d.PowerOff(ctx, driver.Machine{Name: s.Name, Dir: s.Dir}); err != nil {
		return err
	}
	if err := Clean(ctx, s.Dir); err != nil {
		return err
	}
	launched = false
	for _, f := range []*os.File{rf, sf} {
		if err := f.Sync(); err != nil {
			return err
		}
		if err := f.Chmod(templateMode()); err != nil {
			return err
		}
	}
	return nil
}

// startTemplateIncoming has the QEMU of dir, started with -incoming defer,
// read a template's state from descriptor 3 with x-ignore-shared on.
func startTemplateIncoming(ctx context.Context, dir string) error {
	q, err := DialQMP(ctx, Config{Dir: dir}.Path(QMPSocket))
	if err != nil {
		return err
	}
	defer q.Close()
	if err := setIgnoreShared(ctx, q, true); err != nil {
		return err
	}
	_, err = q.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + strconv.Itoa(incomingFD)})
	return err
}

// scratchDisk makes the template QEMU's scratch disk in its directory
// (Config.Scratch): an empty qcow2 of the boot disk's virtual size, which
// the disk package reads from the disk's own header.
func (d *Driver) scratchDisk(ctx context.Context, s driver.StartSpec) (string, error) {
	if s.Disk.Path == "" {
		return "", nil
	}
	disks := disk.New("")
	size, err := disks.VirtualSize(ctx, s.Disk.Path, s.Disk.Format)
	if err != nil {
		return "", fmt.Errorf("the boot disk's size: %w", err)
	}
	path := Config{Dir: s.Dir}.Path(scratchFile)
	if err := disks.CreateBlank(ctx, path, size); err != nil {
		return "", fmt.Errorf("the template's scratch disk: %w", err)
	}
	return path, nil
}
