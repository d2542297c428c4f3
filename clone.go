package vmfest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Clones. Clone makes a new machine from a source, in the source's lock:
//
//   - its record is the source's with a new name, instance id, network
//     reservations (allocateNetworks), MAC on every NIC and VM generation
//     ID; its disk a copy of the source's overlay (a reflink where the
//     file system has them, else a sparse copy), over the same base; its
//     user-data a copy; ISOs in its slots shared read-only;
//   - of a saved source it also gets the source's saved state as hard
//     links (no file is written once committed, and the source's start
//     only unlinks its own names): of the source's memory template
//     (memoryTemplate, made on the first clone where the driver makes
//     them), so the clones map the source's RAM file private and share
//     its pages until each writes them; else of the whole saved state;
//   - of a running or paused source it gets a saved state written by the
//     driver into the clone's directory while the source's hypervisor
//     holds the guest stopped with its disk flushed (QEMU: postmigrate);
//     the overlay is copied then, and a source that ran is continued.
//
// Everything is built in a hidden .creating-NAME-* directory renamed into
// place last, so a crash leaves no clone or a whole one (the sweep
// removes the hidden directory). A clone with a saved state is then
// started — it resumes from the source's memory instead of booting — and
// re-identified (reidentify.go).

// Clone implements Machine.
func (m *localMachine) Clone(ctx context.Context, name string) (Machine, error) {
	return m.clone(ctx, name, nil)
}

// clone is Clone; at, when set (by tests), is called at each named point
// where a crash leaves a distinct state.
func (m *localMachine) clone(ctx context.Context, name string, at func(point string)) (Machine, error) {
	point := func(p string) {
		if at != nil {
			at(p)
		}
	}
	if err := store.ValidateName("machine", name); err != nil {
		return nil, apiError(err)
	}
	if name == m.name {
		return nil, fmt.Errorf("%w: clone of machine %s: give the clone another name", ErrInvalid, m.name)
	}
	var memory bool
	err := m.locked(ctx, func(r record, st State) error {
		if err := m.need("clone", st, PoweredOff, Aborted, Saved, Running, Paused); err != nil {
			return err
		}
		d, err := m.drv(r)
		if err != nil {
			return err
		}
		if err := m.cloneable(r); err != nil {
			return err
		}
		memory = st != PoweredOff && st != Aborted
		if memory {
			if err := checkSaver(d); err != nil {
				return fmt.Errorf("clone machine %s: %w", m.name, err)
			}
		}
		return m.makeClone(ctx, name, d, r, st, point)
	})
	if err != nil {
		return nil, err
	}
	c := &localMachine{l: m.l, name: name}
	if !memory {
		return c, nil
	}
	if err := c.startClone(ctx); err != nil {
		return c, err
	}
	point("clone:started")
	return c, nil
}

// cloneable refuses a source whose disks a clone could not copy or share:
// no overlay (its disk is the user's file), a volume or a user's disk in a
// slot (each is one machine's at a time).
func (m *localMachine) cloneable(r record) error {
	if !r.Overlay {
		return fmt.Errorf("%w: clone of machine %s: it has no overlay (its image is not immutable, so its disk is your file, which vmfest does not copy)", ErrUnsupported, m.name)
	}
	for _, pm := range r.media() {
		if pm.dev.DeviceType == spec.DeviceHardDisk || pm.dev.Volume != "" {
			return fmt.Errorf("%w: clone of machine %s: storage %s holds %s, which is one machine's at a time: detach it first", ErrUnsupported, m.name, pm.at, describeDevice(pm.dev))
		}
	}
	return nil
}

// cloneRecord is the clone's record: the source's, re-identified, with a
// pending re-identification when it starts from the source's memory. Its
// networks are not allocated yet.
func cloneRecord(src record, name string, memory bool) record {
	r := src
	r.Name = name
	r.Created = time.Now().UTC()
	r.Net = netRecord{}
	r.Labels = nil
	if len(src.Labels) > 0 {
		r.Labels = make(map[string]string, len(src.Labels))
		for k, v := range src.Labels {
			r.Labels[k] = v
		}
	}
	r.Hardware.Network = slices.Clone(src.Hardware.Network)
	old := make([]string, len(src.Hardware.Network))
	for i, n := range r.Hardware.Network {
		old[i] = src.Hardware.Network[i].MACAddress
		// A nat NIC of a memory clone keeps the source's MAC: QEMU's
		// user-mode network is the machine's own (no one else sees the
		// MAC), and its DHCP state, which comes with the memory, leased
		// the address its SSH forward points at to that MAC; a new MAC
		// would get the next address and lose the forward.
		if memory && n.AttachmentType == spec.AttachNAT {
			continue
		}
		r.Hardware.Network[i].MACAddress = randomMAC()
	}
	// The vmgenid device must be there exactly when it was there for the
	// saved state: a source of an older vmfest has none.
	r.GenID = ""
	if src.GenID != "" || !memory {
		r.GenID = newGenID()
	}
	r.Reidentify = nil
	if memory {
		r.Reidentify = &reidentifyRecord{Source: src.Name, MACs: old, Since: r.Created}
	}
	return r
}

// makeClone builds the clone named name of the source (record r, state st,
// driver d) and renames it into place; the caller holds the source's
// lock. On error nothing of the clone is left and the source is as it
// was.
func (m *localMachine) makeClone(ctx context.Context, name string, d driver.Driver, r record, st State, point func(string)) (err error) {
	l := m.l
	memory := st != PoweredOff && st != Aborted
	nr := cloneRecord(r, name, memory)
	busy, err := store.LockDirShared(ctx, l.home.MachinesPath())
	if err != nil {
		return fmt.Errorf("clone machine %s: %w", m.name, err)
	}
	defer busy.Unlock()
	final := l.home.MachinePath(name)
	if _, err := os.Stat(final); err == nil {
		return fmt.Errorf("%w: machine %q", ErrExists, name)
	}
	tmp, err := os.MkdirTemp(l.home.MachinesPath(), ".creating-"+name+"-")
	if err != nil {
		return fmt.Errorf("clone machine %s: %w", m.name, err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	point("clone:mkdir")
	if err := l.allocateNetworks(ctx, &nr, r.Net.SSHKeys); err != nil {
		return fmt.Errorf("clone machine %s: %w", m.name, err)
	}
	defer func() {
		if !done {
			l.releaseNetworks(ctx, nr)
		}
	}()
	point("clone:allocated")
	src, dst := m.dir(), tmp
	switch st {
	case Running, Paused:
		if err := m.cloneLive(ctx, d, r, st, dst, point); err != nil {
			return fmt.Errorf("clone machine %s: %w", m.name, err)
		}
	case Saved:
		if err := m.linkSavedState(ctx, d, r, dst); err != nil {
			return fmt.Errorf("clone machine %s: its saved state: %w", m.name, err)
		}
		if err := copyDisk(filepath.Join(src, store.DiskFile), filepath.Join(dst, store.DiskFile)); err != nil {
			return fmt.Errorf("clone machine %s: %w", m.name, err)
		}
	default:
		if err := copyDisk(filepath.Join(src, store.DiskFile), filepath.Join(dst, store.DiskFile)); err != nil {
			return fmt.Errorf("clone machine %s: %w", m.name, err)
		}
	}
	point("clone:disk")
	// The disk's memory snapshots came with it, and so do the files that
	// say where their devices were.
	pcis, _ := filepath.Glob(filepath.Join(src, store.SnapshotPCIGlob))
	for _, p := range pcis {
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("clone machine %s: %w", m.name, err)
		}
		if err := store.WriteFileAtomic(filepath.Join(dst, filepath.Base(p)), data, 0o600); err != nil {
			return fmt.Errorf("clone machine %s: %w", m.name, err)
		}
	}
	if r.UserData {
		data, err := os.ReadFile(filepath.Join(src, store.UserDataFile))
		if err != nil {
			return fmt.Errorf("clone machine %s: its user-data: %w", m.name, err)
		}
		if err := store.WriteFileAtomic(filepath.Join(dst, store.UserDataFile), data, 0o600); err != nil {
			return fmt.Errorf("clone machine %s: %w", m.name, err)
		}
	}
	if err := writeRecord(dst, nr); err != nil {
		return fmt.Errorf("clone machine %s: %w", m.name, err)
	}
	point("clone:record")
	if err := os.Rename(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) || errors.Is(err, errNotEmpty) {
			return fmt.Errorf("%w: machine %q", ErrExists, name)
		}
		return fmt.Errorf("clone machine %s: %w", m.name, err)
	}
	done = true
	point("clone:renamed")
	if err := store.SyncDir(l.home.MachinesPath()); err != nil {
		l.log.Warn("sync machines directory", "err", err)
	}
	l.log.Debug("machine cloned", "machine", name, "source", m.name, "source-state", st, "took", time.Since(nr.Created))
	return nil
}

// linkSavedState gives the clone in dst the saved source's state as hard
// links: of the source's own saved RAM and state when it has them in two
// (it is itself a clone of a template, not yet started), else of its
// memory template (made now if need be), else, when the driver makes no
// templates or this one could not be made, of its whole saved state.
func (m *localMachine) linkSavedState(ctx context.Context, d driver.Driver, r record, dst string) error {
	src := m.dir()
	pair := func(ram, state string) error {
		if err := os.Link(ram, savedMemoryPath(dst)); err != nil {
			return err
		}
		if err := os.Link(state, savedStatePath(dst)); err != nil {
			os.Remove(savedMemoryPath(dst))
			return err
		}
		return nil
	}
	if hasSavedMemory(src) {
		return pair(savedMemoryPath(src), savedStatePath(src))
	}
	if t, ok := d.(driver.Templater); ok {
		tpl, err := m.memoryTemplate(ctx, t, r)
		if err == nil {
			err = pair(filepath.Join(tpl, store.TemplateMemoryFile), filepath.Join(tpl, store.TemplateStateFile))
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		m.l.log.Warn("no memory template: the clone loads a copy of its source's whole memory", "machine", m.name, "err", err)
	}
	return os.Link(savedStatePath(src), savedStatePath(dst))
}

// memoryTemplate returns the saved machine's memory template directory,
// making it first if need be (the caller holds the machine's lock): the
// driver loads the saved state into a RAM file in a hidden
// TemplateTempPrefix directory of the machine's, which is renamed into
// place whole once both files are written and synced, so a crash leaves
// no half template in use (the sweep and the next try remove the hidden
// directory). It goes when the saved state does (discardSavedState);
// machines started from it keep their mappings.
func (m *localMachine) memoryTemplate(ctx context.Context, t driver.Templater, r record) (string, error) {
	dir := m.dir()
	final := filepath.Join(dir, store.TemplateDir)
	if _, err := os.Stat(filepath.Join(final, store.TemplateStateFile)); err == nil {
		if _, err := os.Stat(filepath.Join(final, store.TemplateMemoryFile)); err == nil {
			return final, nil
		}
	}
	if err := os.RemoveAll(final); err != nil {
		return "", err
	}
	begun := time.Now()
	tmp, err := os.MkdirTemp(dir, store.TemplateTempPrefix)
	if err != nil {
		return "", err
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	run := filepath.Join(tmp, store.TemplateRunDir)
	if err := os.Mkdir(run, 0o700); err != nil {
		return "", err
	}
	disk, err := r.driverDisk(dir)
	if err != nil {
		return "", err
	}
	var drives []driver.Drive
	for _, pm := range r.media() {
		drives = append(drives, m.l.driveOf(pm))
	}
	seed := ""
	if r.Image.CloudInit {
		if _, err := os.Stat(filepath.Join(dir, store.CIDataISO)); err == nil {
			seed = filepath.Join(dir, store.CIDataISO)
		}
	}
	s := driver.StartSpec{
		Machine:  driver.Machine{Name: m.name, Dir: run, ID: r.Net.ID},
		Hardware: r.Hardware,
		Disk:     disk,
		Drives:   drives,
		Seed:     seed,
		Incoming: savedStatePath(dir),
		GenID:    r.GenID,
	}
	if err := t.Template(ctx, s, filepath.Join(tmp, store.TemplateMemoryFile), filepath.Join(tmp, store.TemplateStateFile)); err != nil {
		return "", err
	}
	if err := os.RemoveAll(run); err != nil {
		return "", err
	}
	if err := store.SyncDir(tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	done = true
	if err := store.SyncDir(dir); err != nil {
		return "", err
	}
	m.l.log.Debug("memory template made", "machine", m.name, "took", time.Since(begun))
	return final, nil
}

// cloneLive gives the clone in dir the running or paused source's state:
// the driver saves it into dir, holding the guest stopped with its disk
// flushed; the overlay is copied meanwhile; then a source that ran is
// continued (a paused one stays paused). However it ends, the source
// runs, or stays paused, as it was.
func (m *localMachine) cloneLive(ctx context.Context, d driver.Driver, r record, st State, dir string, point func(string)) (err error) {
	ref := m.ref(r)
	begun := time.Now()
	if err := d.(driver.Saver).Save(ctx, ref, savedStatePath(dir)); err != nil {
		return err // the driver continued the source
	}
	defer func() {
		held := time.Since(begun)
		if st == Running {
			if rerr := d.Resume(context.WithoutCancel(ctx), ref); rerr != nil {
				rerr = fmt.Errorf("machine %s could not be continued after the clone's state was taken (it is paused; resume it): %w", m.name, rerr)
				err = errors.Join(err, rerr)
			}
		}
		m.l.log.Debug("source held for a clone", "machine", m.name, "held", held, "ok", err == nil)
	}()
	point("clone:held")
	return copyDisk(filepath.Join(m.dir(), store.DiskFile), filepath.Join(dir, store.DiskFile))
}

// startClone starts the clone from its saved state and re-identifies it.
// A failed start leaves it saved; a failed re-identification leaves it
// running with its source's identity and the flag set. Either error says
// the clone is made.
func (c *localMachine) startClone(ctx context.Context) error {
	var d driver.Driver
	paused := false
	err := c.locked(ctx, func(r record, st State) error {
		if err := c.need("start", st, Saved); err != nil {
			return err
		}
		var err error
		if d, err = c.drv(r); err != nil {
			return err
		}
		s := &starting{m: c, r: r}
		begun := time.Now()
		if err := c.run(ctx, s, nil); err != nil {
			return err
		}
		c.l.log.Debug("clone resumed", "machine", c.name, "took", time.Since(begun))
		paused = s.restored == Paused
		return nil
	})
	if err != nil {
		return fmt.Errorf("machine %s is cloned (saved, from its source's memory) but did not start: %w", c.name, err)
	}
	if paused {
		// Of a paused source: the clone is paused too, and its guest is
		// re-identified when it is resumed.
		return nil
	}
	if err := c.reidentify(ctx, d); err != nil {
		return fmt.Errorf("machine %s is cloned and runs, off its networks, but %w; save and start it to try again, or power it down and start it to boot it with its own identity", c.name, err)
	}
	return nil
}

// muteClone is the start step that keeps a clone resuming from its
// source's memory off its networks until it is re-identified: its guest
// still has the source's MAC and address on each NIC whose MAC the clone
// does not keep (all but nat; see cloneRecord), and would speak with them
// (QEMU has the guest announce itself once the state is loaded). Each such
// NIC's tap drops the frames the guest sends from the source's MAC
// (network.Attachment.Mute) while its link stays up, so the guest's DHCP
// client can lease the moment the guest has the clone's MAC. Where the
// tap cannot be muted (a kernel without cls_bpf, or a record without the
// source's MAC) the NIC's link is held down instead (driver.Links); a
// driver that cannot set links leaves it up. plugReidentified undoes
// either.
func muteClone(ctx context.Context, s *starting) error {
	if s.incoming == "" || s.r.Reidentify == nil {
		return nil
	}
	for _, i := range reidentifiedSlots(s.r) {
		var from net.HardwareAddr
		if i < len(s.r.Reidentify.MACs) {
			from, _ = net.ParseMAC(s.r.Reidentify.MACs[i])
		}
		if s.net != nil && i < len(s.net.NICs) && s.net.NICs[i].Tap != "" && from != nil && !s.m.l.holdLinks[s.m.name] {
			err := s.net.Mute(i, from)
			if err == nil {
				continue
			}
			if !errors.Is(err, network.ErrMuteUnsupported) {
				return err
			}
			s.m.l.log.Warn("the clone's link is held down instead", "machine", s.m.name, "err", err)
		}
		ln, ok := s.drv.(driver.Links)
		if !ok {
			continue
		}
		if err := ln.SetLink(ctx, s.m.ref(s.r), i, false); err != nil {
			return err
		}
	}
	return nil
}

// reidentifiedSlots are the slots of the clone's NICs that take a MAC of
// their own in the guest: plugged, and with a MAC other than the
// source's.
func reidentifiedSlots(r record) []int {
	var out []int
	for i, n := range r.Hardware.Network {
		if n.AttachmentType == spec.AttachNone {
			continue
		}
		if r.Reidentify != nil && i < len(r.Reidentify.MACs) && strings.EqualFold(r.Reidentify.MACs[i], n.MACAddress) {
			continue
		}
		out = append(out, i)
	}
	return out
}

// copyDisk copies the overlay src to the new file dst, durably: a reflink
// (FICLONE) where the file system shares extents, else only src's data
// ranges (SEEK_DATA/SEEK_HOLE, through copy_file_range), dst's holes left
// holes.
func copyDisk(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy the disk: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fmt.Errorf("copy the disk: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, fi.Mode().Perm())
	if err != nil {
		return fmt.Errorf("copy the disk: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("copy the disk: %w", cerr)
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) != nil {
		if err := copySparse(in, out, fi.Size()); err != nil {
			return fmt.Errorf("copy the disk %s: %w", src, err)
		}
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("copy the disk: %w", err)
	}
	return nil
}

// copySparse copies in's data ranges to the same offsets of the empty
// file out and gives out in's size.
func copySparse(in, out *os.File, size int64) error {
	fd := int(in.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole up to the end
		}
		if err != nil {
			return err
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		if _, err := in.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(data, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.CopyN(out, in, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return out.Truncate(size)
}

// newGenID returns a random (version 4) GUID for a VM generation ID.
func newGenID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := fmt.Sprintf("%x", b[:])
	return strings.Join([]string{h[0:8], h[8:12], h[12:16], h[16:20], h[20:32]}, "-")
}
