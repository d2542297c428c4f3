// Package fake is an in-memory driver.Driver for unit tests: machines
// "run" without any process, so the orchestration's lifecycle, error and
// crash-safety paths run in milliseconds. It keeps the contract the real
// drivers keep (a start needs a clean, powered-off machine and disks that
// exist; a kill leaves the machine aborted until Clean; the power button
// powers the guest off unless told to ignore it), and lets a test make any
// operation fail, crash a machine, or answer as its guest agent.
//
// State lives in the Driver value: share one Driver between the Servers of
// a test, never between processes.
package fake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/spec"
)

// Options tunes the fake.
type Options struct {
	// Features, when set, replace the default features (qcow2 and raw
	// disks, backing chains, user-mode NAT, pause, power button, guest
	// agent, console; no taps: the fake makes no host links).
	Features *driver.Features
	// ShutdownDelay is how long a guest takes to power off after the
	// power button; 0: at once.
	ShutdownDelay time.Duration
	// IgnorePowerButton makes guests ignore the power button, as a guest
	// without ACPI support does.
	IgnorePowerButton bool
}

// Driver is the fake driver. Its methods are safe for concurrent use.
type Driver struct {
	opts Options

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every state change
	machines map[string]*machine
	fail     map[string]error
	pid      int
	snaps    map[string][]snapshot // by disk path
}

type machine struct {
	spec    driver.StartSpec
	state   driver.State
	held    driver.State // the state Save found (running, paused) while state is Saved
	pid     int
	boot    int // which boot the guest's memory is from (kept by a save and resume)
	clock   int // how many times guest-set-time was called
	reseeds int // how many times vmfest-reseed-crng was called
	since   time.Time
	starts  int
	console []byte
	ips     map[string]string // MAC -> IPv4
}

var (
	_ driver.Driver    = (*Driver)(nil)
	_ driver.Saver     = (*Driver)(nil)
	_ driver.Templater = (*Driver)(nil)
)

// New returns a fake driver with no machines.
func New(o Options) *Driver {
	return &Driver{opts: o, changed: make(chan struct{}), machines: map[string]*machine{}, fail: map[string]error{}, pid: 4000000, snaps: map[string][]snapshot{}}
}

// Info implements driver.Driver.
func (d *Driver) Info() driver.Info {
	f := driver.Features{
		DiskFormats:  []string{spec.DiskFormatQCOW2, spec.DiskFormatRaw},
		BackingChain: true,
		UserNAT:      true,
		Pause:        true,
		PowerButton:  true,
		GuestAgent:   true,
		Console:      true,
		// Save and StartSpec.Incoming: the state file holds the guest's
		// boot number and run state.
		MemorySnapshots: true,
	}
	if d.opts.Features != nil {
		f = *d.opts.Features
	}
	return driver.Info{Name: "fake", Features: f}
}

// Fail makes the next call of op (Start, Status, Pause, Resume,
// PowerButton, PowerOff, Kill, WaitExit, Clean, Forget, Console, Agent,
// Save)
// return err, once.
func (d *Driver) Fail(op string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fail[op] = err
}

// Crash ends the run of the machine in dir as a hypervisor crash does: it reads
// as aborted until Clean.
func (d *Driver) Crash(dir string) {
	d.set(dir, driver.Aborted)
}

// Shutdown powers the machine off from inside the guest (as `poweroff`).
func (d *Driver) Shutdown(dir string) { d.set(dir, driver.PoweredOff) }

// SetIP makes the guest agent of the machine in dir report ip on the
// interface with mac.
func (d *Driver) SetIP(dir, mac, ip string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.get(dir)
	m.ips[strings.ToLower(mac)] = ip
}

// Started returns what the machine in dir was last started with, and how
// many times it was started.
func (d *Driver) Started(dir string) (driver.StartSpec, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.get(dir)
	return m.spec, m.starts
}

// Running lists the directories of the machines that run or are paused.
func (d *Driver) Running() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for dir, m := range d.machines {
		if m.state == driver.Running || m.state == driver.Paused || m.state == driver.Stopping {
			out = append(out, dir)
		}
	}
	return out
}

func (d *Driver) get(dir string) *machine {
	m := d.machines[dir]
	if m == nil {
		m = &machine{state: driver.PoweredOff, ips: map[string]string{}}
		d.machines[dir] = m
	}
	return m
}

// failed returns and clears the error set for op.
func (d *Driver) failed(op string) error {
	err := d.fail[op]
	delete(d.fail, op)
	if err != nil {
		return fmt.Errorf("fake %s: %w", op, err)
	}
	return nil
}

func (d *Driver) set(dir string, st driver.State) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.setLocked(d.get(dir), st)
}

func (d *Driver) setLocked(m *machine, st driver.State) {
	m.state = st
	if st == driver.PoweredOff || st == driver.Aborted {
		m.pid = 0
		if st == driver.PoweredOff {
			m.since = time.Time{}
		}
	}
	close(d.changed)
	d.changed = make(chan struct{})
}

func alive(st driver.State) bool {
	return st == driver.Running || st == driver.Paused || st == driver.Stopping || st == driver.Saved
}

// Boot returns which boot the guest's memory in dir is from: a start that
// boots counts one more, a resume from a saved state keeps the count the
// state was saved with (as a real guest keeps its processes).
func (d *Driver) Boot(dir string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.get(dir).boot
}

// ClockSets returns how many times the guest agent of the machine in dir
// was asked to set the guest's clock (guest-set-time).
func (d *Driver) ClockSets(dir string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.get(dir).clock
}

// Reseeds returns how many times the guest agent of the machine in dir was
// asked to reseed the guest's CRNG (vmfest-reseed-crng, the tiny guest
// agent's command).
func (d *Driver) Reseeds(dir string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.get(dir).reseeds
}

// savedFile is what the fake writes to a saved-state file.
type savedFile struct {
	Magic string       `json:"magic"`
	Boot  int          `json:"boot"`
	State driver.State `json:"state"`
	// Shared: a memory template's state, whose RAM file is beside it.
	Shared bool `json:"shared,omitempty"`
}

// fakeRAM is what a fake memory template's RAM file holds.
const fakeRAM = "vmfest-fake-ram\n"

// Template implements driver.Templater: the state file is the saved
// state's, marked as a template's, and the RAM file a fixed line; both
// end read-only.
func (d *Driver) Template(ctx context.Context, s driver.StartSpec, ram, state string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("Template"); err != nil {
		return err
	}
	data, err := os.ReadFile(s.Incoming)
	if err != nil {
		return fmt.Errorf("fake Template: %w", err)
	}
	var sf savedFile
	if err := json.Unmarshal(data, &sf); err != nil || sf.Magic != savedMagic || sf.Shared {
		return fmt.Errorf("fake Template: %s is not a fake saved state of a whole machine", s.Incoming)
	}
	sf.Shared = true
	if data, err = json.Marshal(sf); err != nil {
		return err
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{ram, []byte(fakeRAM)}, {state, data}} {
		if err := os.WriteFile(f.path, f.data, 0o400); err != nil {
			os.Remove(ram)
			os.Remove(state)
			return fmt.Errorf("fake Template: %w", err)
		}
	}
	return nil
}

const savedMagic = "vmfest-fake-saved-state"

// Save implements driver.Saver: it writes the guest's boot number and run
// state to path and holds the machine as Saved until PowerOff or Kill.
func (d *Driver) Save(ctx context.Context, dm driver.Machine, path string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("Save"); err != nil {
		return err
	}
	m := d.get(dm.Dir)
	if m.state != driver.Running && m.state != driver.Paused {
		return fmt.Errorf("fake Save: machine %s is %s", dm.Name, m.state)
	}
	data, err := json.Marshal(savedFile{Magic: savedMagic, Boot: m.boot, State: m.state})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("fake Save: %w", err)
	}
	_, werr := f.Write(data)
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		os.Remove(path)
		return fmt.Errorf("fake Save: %w", err)
	}
	m.held = m.state
	d.setLocked(m, driver.Saved)
	return nil
}

// Start implements driver.Lifecycle. It checks what a hypervisor would:
// the disk and its base exist, the formats are ones it opens, every
// hard-disk slot has its file, every NIC that needs one has its backend.
func (d *Driver) Start(ctx context.Context, s driver.StartSpec) (driver.Started, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("Start"); err != nil {
		return driver.Started{}, err
	}
	m := d.get(s.Dir)
	if m.state != driver.PoweredOff {
		return driver.Started{}, fmt.Errorf("fake: machine %s is %s, not clean and powered off", s.Name, m.state)
	}
	if err := s.Disk.Validate(); err != nil {
		return driver.Started{}, err
	}
	for _, p := range []string{s.Disk.Path, s.Disk.BackingPath, s.Seed} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return driver.Started{}, fmt.Errorf("fake: open %s: %w", p, err)
		}
	}
	for _, ctl := range s.Hardware.Storage {
		for _, sl := range s.Hardware.Slots(ctl) {
			dr, ok := s.Drive(ctl.Name, sl.Index)
			switch {
			case sl.Boot:
			case !ok && sl.Kind == spec.DeviceHardDisk:
				return driver.Started{}, fmt.Errorf("fake: storage %q slot %d: a hard-disk slot needs a disk", ctl.Name, sl.Index)
			case ok:
				if err := dr.Disk.Validate(); err != nil {
					return driver.Started{}, fmt.Errorf("fake: storage %q slot %d: %w", ctl.Name, sl.Index, err)
				}
				if _, err := os.Stat(dr.Disk.Path); err != nil {
					return driver.Started{}, fmt.Errorf("fake: open %s: %w", dr.Disk.Path, err)
				}
			}
		}
	}
	if len(s.NICs) != len(s.Hardware.Network) {
		return driver.Started{}, fmt.Errorf("fake: %d NIC backends for %d NICs", len(s.NICs), len(s.Hardware.Network))
	}
	for i, n := range s.Hardware.Network {
		switch n.AttachmentType {
		case spec.AttachHostOnly, spec.AttachBridged, spec.AttachInternal:
			if s.NICs[i].Tap == "" {
				return driver.Started{}, fmt.Errorf("fake: network[%d] (%s) has no tap", i, n.AttachmentType)
			}
		}
	}
	var restored driver.State
	boot := m.boot + 1
	if s.Incoming != "" {
		data, err := os.ReadFile(s.Incoming)
		if err != nil {
			return driver.Started{}, fmt.Errorf("fake: saved state: %w", err)
		}
		var sf savedFile
		if err := json.Unmarshal(data, &sf); err != nil || sf.Magic != savedMagic {
			return driver.Started{}, fmt.Errorf("fake: saved state %s: not a fake saved state (%v)", s.Incoming, err)
		}
		if sf.Shared != (s.MemoryTemplate != "") {
			return driver.Started{}, fmt.Errorf("fake: saved state %s (a template's: %v) with memory template %q", s.Incoming, sf.Shared, s.MemoryTemplate)
		}
		if s.MemoryTemplate != "" {
			if ram, err := os.ReadFile(s.MemoryTemplate); err != nil || string(ram) != fakeRAM {
				return driver.Started{}, fmt.Errorf("fake: memory template %s: not a fake RAM file (%v)", s.MemoryTemplate, err)
			}
		}
		boot, restored = sf.Boot, sf.State
	}
	if s.Snapshot != "" {
		sn, ok := d.snapshot(s.Disk.Path, s.Snapshot)
		if !ok || sn.MemorySize == 0 {
			return driver.Started{}, fmt.Errorf("fake: -loadvm %s: no snapshot with memory of that name in %s", s.Snapshot, s.Disk.Path)
		}
		boot = sn.boot
	}
	d.pid++
	m.spec, m.pid, m.since, m.boot = s, d.pid, time.Now(), boot
	m.starts++
	if restored != "" {
		// Loaded with the guest's CPUs held until Resume, as -S does.
		m.console = append(m.console, fmt.Sprintf("fake: %s resumed\n", s.Name)...)
		d.setLocked(m, driver.Paused)
		return driver.Started{Accel: "tcg", Restored: restored}, nil
	}
	m.console = append(m.console[:0], fmt.Sprintf("fake: %s booted\n", s.Name)...)
	d.setLocked(m, driver.Running)
	return driver.Started{Accel: "tcg"}, nil
}

// Status implements driver.Lifecycle.
func (d *Driver) Status(ctx context.Context, dm driver.Machine) (driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("Status"); err != nil {
		return driver.Status{}, err
	}
	m := d.get(dm.Dir)
	return driver.Status{State: m.state, PID: m.pid, Since: m.since}, nil
}

// transition moves a machine from one of from to to, or says why not.
func (d *Driver) transition(op string, dm driver.Machine, to driver.State, from ...driver.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed(op); err != nil {
		return err
	}
	m := d.get(dm.Dir)
	for _, f := range from {
		if m.state == f {
			d.setLocked(m, to)
			return nil
		}
	}
	return fmt.Errorf("fake %s: machine %s is %s", op, dm.Name, m.state)
}

// Pause implements driver.Lifecycle.
func (d *Driver) Pause(ctx context.Context, m driver.Machine) error {
	return d.transition("Pause", m, driver.Paused, driver.Running)
}

// Resume implements driver.Lifecycle.
func (d *Driver) Resume(ctx context.Context, m driver.Machine) error {
	// A Saved machine is held by its hypervisor, which can continue it
	// as a QEMU in postmigrate does.
	return d.transition("Resume", m, driver.Running, driver.Paused, driver.Saved)
}

// PowerButton implements driver.Lifecycle: the guest powers off after
// ShutdownDelay, unless IgnorePowerButton.
func (d *Driver) PowerButton(ctx context.Context, dm driver.Machine) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("PowerButton"); err != nil {
		return err
	}
	m := d.get(dm.Dir)
	if m.state != driver.Running {
		return fmt.Errorf("fake PowerButton: machine %s is %s", dm.Name, m.state)
	}
	if d.opts.IgnorePowerButton {
		return nil
	}
	pid := m.pid
	time.AfterFunc(d.opts.ShutdownDelay, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if m.pid == pid && m.state == driver.Running {
			d.setLocked(m, driver.PoweredOff)
		}
	})
	return nil
}

// PowerOff implements driver.Lifecycle.
func (d *Driver) PowerOff(ctx context.Context, m driver.Machine) error {
	return d.transition("PowerOff", m, driver.PoweredOff, driver.Running, driver.Paused, driver.Stopping, driver.Saved, driver.PoweredOff)
}

// Kill implements driver.Lifecycle: the machine reads as aborted until
// Clean, as a killed QEMU's pidfile makes it.
func (d *Driver) Kill(ctx context.Context, dm driver.Machine) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("Kill"); err != nil {
		return err
	}
	if m := d.get(dm.Dir); alive(m.state) {
		d.setLocked(m, driver.Aborted)
	}
	return nil
}

// WaitExit implements driver.Lifecycle.
func (d *Driver) WaitExit(ctx context.Context, dm driver.Machine) error {
	for {
		d.mu.Lock()
		if err := d.failed("WaitExit"); err != nil {
			d.mu.Unlock()
			return err
		}
		st, ch := d.get(dm.Dir).state, d.changed
		d.mu.Unlock()
		if !alive(st) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Clean implements driver.Lifecycle.
func (d *Driver) Clean(ctx context.Context, dm driver.Machine) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("Clean"); err != nil {
		return err
	}
	m := d.get(dm.Dir)
	if alive(m.state) {
		return errors.New("fake: the machine is still running")
	}
	if m.state == driver.Aborted {
		d.setLocked(m, driver.PoweredOff)
	}
	return nil
}

// Forget implements driver.Lifecycle.
func (d *Driver) Forget(ctx context.Context, dm driver.Machine) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("Forget"); err != nil {
		return err
	}
	delete(d.machines, dm.Dir)
	return nil
}

// Console implements driver.Console.
func (d *Driver) Console(ctx context.Context, dm driver.Machine) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("Console"); err != nil {
		return nil, err
	}
	return append([]byte(nil), d.get(dm.Dir).console...), nil
}

// Agent implements driver.GuestAgent: it answers while the machine runs.
func (d *Driver) Agent(ctx context.Context, dm driver.Machine) (driver.Agent, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.failed("Agent"); err != nil {
		return nil, err
	}
	if m := d.get(dm.Dir); m.state != driver.Running {
		return nil, fmt.Errorf("fake: guest agent of %s does not answer: it is %s", dm.Name, m.state)
	}
	return &agent{d: d, dir: dm.Dir}, nil
}

type agent struct {
	d   *Driver
	dir string
}

// Execute answers guest-ping, guest-set-time, vmfest-reseed-crng (as the
// tiny guest's agent does) and guest-network-get-interfaces.
func (a *agent) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	a.d.mu.Lock()
	defer a.d.mu.Unlock()
	m := a.d.get(a.dir)
	if m.state != driver.Running {
		return nil, fmt.Errorf("fake: guest agent gone: the machine is %s", m.state)
	}
	switch command {
	case "guest-ping":
		return json.RawMessage("{}"), nil
	case "guest-set-time":
		m.clock++
		return json.RawMessage("{}"), nil
	case "vmfest-reseed-crng":
		m.reseeds++
		return json.RawMessage("{}"), nil
	case "guest-network-get-interfaces":
		type addr struct {
			Type    string `json:"ip-address-type"`
			Address string `json:"ip-address"`
			Prefix  int    `json:"prefix"`
		}
		type iface struct {
			Name  string `json:"name"`
			MAC   string `json:"hardware-address"`
			Addrs []addr `json:"ip-addresses"`
		}
		var out []iface
		for i, n := range m.spec.Hardware.Network {
			f := iface{Name: fmt.Sprintf("eth%d", i), MAC: strings.ToLower(n.MACAddress), Addrs: []addr{}}
			if ip := m.ips[f.MAC]; ip != "" {
				f.Addrs = append(f.Addrs, addr{Type: "ipv4", Address: ip, Prefix: 24})
			}
			out = append(out, f)
		}
		return json.Marshal(out)
	}
	return nil, fmt.Errorf("fake: guest agent: %s: %w", command, driver.ErrUnsupported)
}

func (a *agent) Close() error { return nil }
