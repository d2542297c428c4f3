package vmfest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmfest/vmfest/cloudinit"
	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/network"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// Start implements Machine.
func (m *localMachine) Start(ctx context.Context) error {
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("start", st, PoweredOff, Aborted, Saved); err != nil {
			return err
		}
		if err := m.start(ctx, r, nil); err != nil {
			return err
		}
		if r.Reidentify != nil {
			// A clone whose guest has not yet taken its own identity.
			m.retryReidentify(ctx, r, st == Saved)
		}
		return nil
	})
}

// starting is one start in progress: what the steps have found and made,
// and the undo of each step that made something, run last first if a later
// step fails.
type starting struct {
	m      *localMachine
	r      record
	drv    driver.Driver
	disk   driver.Disk
	drives []driver.Drive
	net    *network.Attachment
	seed   string // the cloud-init seed ISO, if any
	// incoming is the saved-state file the machine resumes from (empty:
	// it boots); restored is the state it was saved in.
	incoming string
	restored driver.State
	// snapshot is the memory snapshot of the disk the machine starts from
	// (empty: it boots).
	snapshot string
	undo     []func()
}

// step is one named start-up step.
type step struct {
	name string
	fn   func(ctx context.Context, s *starting) error
}

// startSteps are the start-up steps, in order.
var startSteps = []step{
	{"clean leftovers of the last run", cleanLastRun},
	{"check what the driver can do", checkFeatures},
	{"check the disk", checkStartDisk},
	{"check the volumes, disks and ISOs in its slots", checkStartMedia},
	{"set up the networks", setUpNetworks},
	{"write the cloud-init seed", writeSeed},
	{"launch the machine", launch},
	{"keep a clone off its networks until it is re-identified", muteClone},
	{"plug the NICs into their networks", plugNICs},
	{"discard the saved state", discardResumed},
	{"continue the resumed guest", continueResumed},
}

// start runs startSteps, undoing what was done if one fails. after, when
// set (by crash tests), is called after each step.
func (m *localMachine) start(ctx context.Context, r record, after func(step string)) (err error) {
	return m.run(ctx, &starting{m: m, r: r}, after)
}

// startFromSnapshot starts the powered-off machine from its memory
// snapshot tag: it runs where it was when the snapshot was taken.
func (m *localMachine) startFromSnapshot(ctx context.Context, r record, tag string) error {
	return m.run(ctx, &starting{m: m, r: r, snapshot: tag}, nil)
}

// run runs startSteps for s.
func (m *localMachine) run(ctx context.Context, s *starting, after func(step string)) (err error) {
	r := s.r
	if s.drv, err = m.drv(r); err != nil {
		return err
	}
	defer func() { s.net.Unlock() }()
	defer func() {
		if err != nil {
			for i := len(s.undo) - 1; i >= 0; i-- {
				s.undo[i]()
			}
		}
	}()
	begun := time.Now()
	for _, st := range startSteps {
		if err := st.fn(ctx, s); err != nil {
			return fmt.Errorf("start machine %s: %s: %w", m.name, st.name, err)
		}
		m.l.log.Debug("start step done", "machine", m.name, "step", st.name, "at", time.Since(begun))
		if after != nil {
			after(st.name)
		}
	}
	m.l.log.Debug("machine started", "machine", m.name, "driver", s.drv.Info().Name, "accel", s.r.Accel, "resumed", s.incoming != "")
	// A clone resumed from its source's memory has its clock set by its
	// re-identification, in the same agent session.
	if (s.restored == Running || s.snapshot != "") && !(s.incoming != "" && s.r.Reidentify != nil) {
		m.setClock(ctx, s.drv, s.r)
	}
	return nil
}

// cleanLastRun removes what the last run left. A saved machine resumes
// from its saved-state file; a hypervisor that still holds that state (it
// was killed with vmfest before it ended, or a resume was cut short before
// the guest was continued) is ended first.
func cleanLastRun(ctx context.Context, s *starting) error {
	clearStopping(s.m.dir())
	if hasSavedState(s.m.dir()) {
		if err := checkSaver(s.drv); err != nil {
			return err
		}
		if err := s.m.endSavedRun(ctx, s.drv, s.r); err != nil {
			return err
		}
		s.incoming = savedStatePath(s.m.dir())
		return nil
	}
	return s.drv.Clean(ctx, s.m.ref(s.r))
}

// checkFeatures refuses, before anything is made, a machine its driver
// cannot run, and says why.
func checkFeatures(ctx context.Context, s *starting) error {
	info := s.drv.Info()
	f := info.Features
	for _, format := range []string{s.r.DiskFormat, s.r.BaseFormat} {
		if format != "" && !f.HasDiskFormat(format) {
			return fmt.Errorf("%w: the %s driver does not open %s disks (it opens %s)", driver.ErrUnsupported, info.Name, format, strings.Join(f.DiskFormats, ", "))
		}
	}
	if s.r.Overlay && !f.BackingChain {
		return fmt.Errorf("%w: the %s driver does not open overlays over a base image", driver.ErrUnsupported, info.Name)
	}
	for i, n := range s.r.Hardware.Network {
		switch n.AttachmentType {
		case spec.AttachNAT:
			if !f.UserNAT {
				return fmt.Errorf("%w: network[%d]: the %s driver has no user-mode NAT; use host-only", driver.ErrUnsupported, i, info.Name)
			}
		case spec.AttachHostOnly, spec.AttachBridged, spec.AttachInternal:
			if !f.Taps {
				return fmt.Errorf("%w: network[%d] (%s): the %s driver cannot put a NIC on a host tap; use nat", driver.ErrUnsupported, i, n.AttachmentType, info.Name)
			}
		}
	}
	return nil
}

func checkStartDisk(ctx context.Context, s *starting) (err error) {
	r := s.r
	if _, err := os.Stat(r.disk(s.m.dir())); err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	if s.disk, err = r.driverDisk(s.m.dir()); err != nil {
		return err
	}
	if r.ImageModel != "" {
		return nil // installed models were checked when installed
	}
	// The caller's file may have changed since the machine was made:
	// check it again, as its recorded format.
	format := s.disk.Format
	if r.Overlay {
		format = s.disk.BackingFormat
	}
	_, err = checkDisk(r.Image.Location, format)
	return err
}

// checkStartMedia checks the files in the machine's other storage slots
// again, as recorded: each may have changed or gone since it was
// attached.
func checkStartMedia(ctx context.Context, s *starting) error {
	for _, pm := range s.r.media() {
		dr := s.m.l.driveOf(pm)
		what := describeDevice(pm.dev)
		switch {
		case pm.dev.Volume != "":
			if _, err := s.m.l.readVolume(pm.dev.Volume); err != nil {
				return fmt.Errorf("storage %s: %w", pm.at, err)
			}
			fallthrough
		case pm.dev.DeviceType == spec.DeviceHardDisk:
			if _, err := checkDisk(dr.Disk.Path, dr.Disk.Format); err != nil {
				return fmt.Errorf("storage %s (%s): %w", pm.at, what, err)
			}
		default:
			if err := checkISO(dr.Disk.Path); err != nil {
				return fmt.Errorf("%w: storage %s: %w", ErrInvalid, pm.at, err)
			}
		}
		s.drives = append(s.drives, dr)
	}
	return nil
}

func setUpNetworks(ctx context.Context, s *starting) (err error) {
	if s.net, err = s.m.attachNetworks(ctx, &s.r); err != nil {
		return err
	}
	s.undo = append(s.undo, func() {
		s.net.Unlock()
		s.m.settleNetworks(context.Background(), s.r)
	})
	return nil
}

// writeSeed writes the NoCloud seed of a cloud-init image: the host name,
// vmfest's key and the user's keys, and each attached NIC by its MAC.
func writeSeed(ctx context.Context, s *starting) error {
	m, r := s.m, s.r
	seed := filepath.Join(m.dir(), store.CIDataISO)
	if !r.Image.CloudInit {
		os.Remove(seed)
		return nil
	}
	_, pub, err := m.l.SSHKey()
	if err != nil {
		return err
	}
	sd := cloudinit.Seed{
		InstanceID:     r.Net.ID,
		Hostname:       m.name,
		User:           r.Image.Username,
		Password:       r.Image.Password,
		AuthorizedKeys: append([]string{pub}, r.Net.SSHKeys...),
	}
	for _, n := range r.Hardware.Network {
		if n.AttachmentType == spec.AttachNone {
			continue
		}
		sd.NICs = append(sd.NICs, cloudinit.NIC{MAC: n.MACAddress, DHCP: n.AttachmentType != spec.AttachInternal})
	}
	if r.UserData {
		if sd.UserData, err = os.ReadFile(filepath.Join(m.dir(), store.UserDataFile)); err != nil {
			return fmt.Errorf("the machine's user-data: %w", err)
		}
	}
	if err := sd.WriteISO(seed); err != nil {
		return err
	}
	s.seed = seed
	return nil
}

func launch(ctx context.Context, s *starting) error {
	m, r := s.m, s.r
	var started driver.Started
	var err error
	for attempt := 1; ; attempt++ {
		started, err = s.drv.Start(ctx, driver.StartSpec{
			Machine:  m.ref(r),
			Hardware: r.Hardware,
			Disk:     s.disk,
			Drives:   s.drives,
			NICs:     nicBackends(s.net),
			Seed:     s.seed,
			Incoming: s.incoming,
			// A clone's saved state may leave its RAM in a file beside it.
			MemoryTemplate: savedMemory(s),
			Snapshot:       s.snapshot,
			GenID:          r.GenID,
		})
		// Another process may bind an SSH forward's port between its
		// choice and QEMU's bind: choose again, a few times.
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "Could not set up host forwarding rule") {
			break
		}
		m.l.log.Debug("an SSH forward's port was taken meanwhile; choosing new ones", "machine", m.name, "err", err)
		if perr := s.net.NewSSHPorts(); perr != nil {
			return perr
		}
		for i, b := range s.net.NICs {
			s.r.Net.NICs[i].SSHPort = b.SSHPort
		}
		if werr := writeRecord(m.dir(), s.r); werr != nil {
			return werr
		}
		r = s.r
	}
	if err != nil {
		return memoryError(err, r.Hardware.MemorySize)
	}
	s.restored = started.Restored
	s.undo = append(s.undo, func() {
		ctx := context.Background()
		s.drv.Kill(ctx, m.ref(r))
		s.drv.WaitExit(ctx, m.ref(r))
		s.drv.Clean(ctx, m.ref(r))
	})
	if started.Accel != s.r.Accel || s.r.Driver == "" {
		s.r.Accel = started.Accel
		s.r.Driver = s.drv.Info().Name
		return writeRecord(m.dir(), s.r)
	}
	return nil
}

func plugNICs(ctx context.Context, s *starting) error { return s.net.Plug() }

// nicBackends is what the driver is given of each NIC's host end.
func nicBackends(a *network.Attachment) []driver.NIC {
	out := make([]driver.NIC, len(a.NICs))
	for i, b := range a.NICs {
		out[i] = driver.NIC{Tap: b.Tap, SSHPort: b.SSHPort}
	}
	return out
}

// memoryError words a hypervisor's failure to allocate the guest's memory
// as the host's limit (ErrUnavailable, naming memory-size); other errors
// are returned as they are. QEMU says so only in its message.
func memoryError(err error, mib int) error {
	if !strings.Contains(err.Error(), "cannot set up guest memory") {
		return err
	}
	avail := "unknown"
	if n, aerr := hostMemory("MemAvailable"); aerr == nil {
		avail = fmt.Sprintf("%d MiB", n)
	}
	return fmt.Errorf("%w: memory-size: the host cannot give the machine its %d MiB now (available: %s); stop other machines or lower memory-size: %w", ErrUnavailable, mib, avail, err)
}
