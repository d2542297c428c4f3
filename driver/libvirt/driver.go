// Package libvirt is vmfest's second driver: each machine is a persistent
// libvirt domain, defined from the same resolved spec, on the same qcow2
// overlay of the same immutable model as the QEMU driver's, so it shows in
// `virsh list --all` and virt-manager while the machine exists and is run
// by libvirt's own lifecycle calls (create, suspend, resume, shutdown with
// the ACPI power button, destroy, undefine).
//
// The driver speaks libvirt's RPC protocol itself
// (github.com/digitalocean/go-libvirt, pure Go, no cgo), one connection per
// call to the local libvirtd's Unix socket, bounded by the call's context.
// It acts only on domains marked as vmfest's (a <metadata> element in
// Namespace) for the machine's instance id, and refuses any other domain
// of the same name.
//
// Files in the machine directory: SerialLog (the console, written by
// virtlogd) and RunFile (present from a Start until a clean power-off or
// Clean; it tells a killed or crashed machine from one powered off).
package libvirt

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/spec"
)

// RunFile, in the machine directory, exists from a Start until the run
// ends cleanly (PowerOff) or Clean removes it. libvirt reports a domain
// destroyed both for vmfest's power-off and for a kill; with RunFile still
// there, a domain that did not shut down by itself reads Aborted.
const RunFile = "libvirt.run"

// PIDDir is where libvirtd (qemu:///system) keeps each running domain's
// QEMU pidfile, <domain>.pid.
const PIDDir = "/run/libvirt/qemu"

// Options configures the libvirt driver. The zero value is usable.
type Options struct {
	// URI is the libvirt connection; default qemu:///system. Only local
	// URIs: see parseURI.
	URI string
	// Accel is kvm, tcg or auto (the default): see qemu.ChooseAccel.
	Accel string
	// Host is where the accelerator is probed; default qemu.DefaultHost().
	Host *qemu.Host
	// Logger receives warnings (TCG chosen for lack of KVM); default
	// slog.Default().
	Logger *slog.Logger
}

// Driver runs machines as libvirt domains. It keeps no state between
// calls: everything is read back from libvirtd and the machine directory.
type Driver struct {
	opts Options
	ep   endpoint
}

var _ driver.Driver = (*Driver)(nil)

// New returns the libvirt driver. It does not connect: each call does, so
// a libvirtd started (or restarted) later is found.
func New(o Options) (*Driver, error) {
	if o.URI == "" {
		o.URI = DefaultURI
	}
	if o.Host == nil {
		h := qemu.DefaultHost()
		o.Host = &h
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ep, err := parseURI(o.URI)
	if err != nil {
		return nil, err
	}
	if _, _, err := qemu.ChooseAccel(o.Accel, *o.Host); err != nil {
		return nil, err
	}
	return &Driver{opts: o, ep: ep}, nil
}

// Info implements driver.Driver.
func (d *Driver) Info() driver.Info {
	return driver.Info{Name: "libvirt", Features: driver.Features{
		DiskFormats:  []string{spec.DiskFormatQCOW2, spec.DiskFormatRaw},
		BackingChain: true,
		// User-mode networking is libvirt's <interface type='user'>; its
		// port forwards go in through the monitor (hostfwds).
		UserNAT:     true,
		Taps:        true,
		Pause:       true,
		PowerButton: true,
		GuestAgent:  true,
		Console:     true,
		// Not yet: libvirt's managed save and snapshots would do it.
		MemorySnapshots: false,
	}}
}

func (d *Driver) dial(ctx context.Context) (*conn, error) { return dial(ctx, d.ep) }

// errNoDomain is returned by lookup when the machine has no domain.
var errNoDomain = errors.New("no libvirt domain")

// lookup finds the machine's domain and checks that it is vmfest's and
// this machine's. A domain of that name that is not is refused.
func (d *Driver) lookup(c *conn, m driver.Machine) (golibvirt.Domain, error) {
	name := DomainName(m)
	dom, err := c.DomainLookupByName(name)
	if isCode(err, golibvirt.ErrNoDomain) {
		return dom, fmt.Errorf("%w %s", errNoDomain, name)
	}
	if err != nil {
		return dom, c.wrap(fmt.Errorf("libvirt: look up domain %s: %w", name, err))
	}
	raw, err := c.DomainGetMetadata(dom, int32(golibvirt.DomainMetadataElement), golibvirt.OptString{Namespace}, golibvirt.DomainAffectCurrent)
	if isCode(err, golibvirt.ErrNoDomainMetadata) {
		return dom, fmt.Errorf("libvirt domain %s exists and was not made by vmfest (no %s metadata): vmfest leaves it alone; rename or undefine it to use this machine", name, Namespace)
	}
	if err != nil {
		return dom, c.wrap(fmt.Errorf("libvirt: read domain %s's metadata: %w", name, err))
	}
	mk, err := parseMark(raw)
	if err != nil {
		return dom, fmt.Errorf("libvirt domain %s: vmfest metadata unreadable (%w): vmfest leaves it alone", name, err)
	}
	// The instance id is unique among every machine vmfest made; the
	// directory may differ when the state directory moved (Start then
	// records the new one).
	if mk.ID != m.ID || (m.ID == "" && filepath.Clean(mk.Dir) != filepath.Clean(m.Dir)) {
		return dom, fmt.Errorf("libvirt domain %s belongs to another vmfest machine (directory %s, id %s), not to %s: vmfest leaves it alone", name, mk.Dir, mk.ID, m.Dir)
	}
	return dom, nil
}

// state reads the domain's state and reason; a machine without a domain is
// shut off.
func (d *Driver) state(c *conn, m driver.Machine) (golibvirt.DomainState, int32, error) {
	dom, err := d.lookup(c, m)
	if errors.Is(err, errNoDomain) {
		return golibvirt.DomainShutoff, int32(golibvirt.DomainShutoffUnknown), nil
	}
	if err != nil {
		return 0, 0, err
	}
	st, reason, err := c.DomainGetState(dom, 0)
	if isCode(err, golibvirt.ErrNoDomain) {
		return golibvirt.DomainShutoff, int32(golibvirt.DomainShutoffUnknown), nil
	}
	if err != nil {
		return 0, 0, c.wrap(fmt.Errorf("libvirt: state of domain %s: %w", DomainName(m), err))
	}
	return golibvirt.DomainState(st), reason, nil
}

// active says whether a state has a QEMU process.
func active(st golibvirt.DomainState) bool {
	switch st {
	case golibvirt.DomainRunning, golibvirt.DomainBlocked, golibvirt.DomainPaused,
		golibvirt.DomainShutdown, golibvirt.DomainPmsuspended, golibvirt.DomainCrashed:
		return true
	}
	return false
}

// vmState maps libvirt's state to vmfest's; run says whether RunFile
// exists.
func vmState(st golibvirt.DomainState, reason int32, run bool) driver.State {
	switch st {
	case golibvirt.DomainRunning, golibvirt.DomainBlocked:
		return driver.Running
	case golibvirt.DomainPaused:
		switch golibvirt.DomainPausedReason(reason) {
		case golibvirt.DomainPausedIoerror, golibvirt.DomainPausedCrashed, golibvirt.DomainPausedAPIError:
			// As driver/qemu reads QEMU's io-error and guest-panicked.
			return driver.Aborted
		}
		return driver.Paused
	case golibvirt.DomainPmsuspended:
		return driver.Paused
	case golibvirt.DomainShutdown:
		return driver.Stopping
	case golibvirt.DomainCrashed:
		return driver.Aborted
	}
	// Shut off: a guest that powered itself off ended cleanly; any other
	// end of a run not yet Cleaned (killed, crashed, destroyed behind
	// vmfest's back, QEMU gone while libvirtd was down) is Aborted.
	if golibvirt.DomainShutoffReason(reason) == golibvirt.DomainShutoffShutdown || !run {
		return driver.PoweredOff
	}
	return driver.Aborted
}

func runPath(m driver.Machine) string { return filepath.Join(m.Dir, RunFile) }

// Start implements driver.Lifecycle: it defines the domain afresh from the
// spec (DomainDefineXMLFlags), starts it paused when a nat
// NIC has forwards to add, adds them, and resumes it. A failure after the
// domain started destroys it again.
func (d *Driver) Start(ctx context.Context, s driver.StartSpec) (driver.Started, error) {
	if s.MemoryTemplate != "" {
		return driver.Started{}, fmt.Errorf("%w: the libvirt driver does not start a machine from a memory template", driver.ErrUnsupported)
	}
	accel, note, err := qemu.ChooseAccel(d.opts.Accel, *d.opts.Host)
	if err != nil {
		return driver.Started{}, err
	}
	c, err := d.dial(ctx)
	if err != nil {
		return driver.Started{}, err
	}
	defer c.close()
	models, err := secModels(c)
	if err != nil {
		return driver.Started{}, err
	}
	def, err := domainXML(s, domainParams{Accel: accel, SecModels: models})
	if err != nil {
		return driver.Started{}, err
	}
	name := def.Name
	// A domain already defined for the machine is redefined in place
	// (same UUID); one that is not vmfest's or runs is refused.
	switch old, err := d.lookup(c, s.Machine); {
	case errors.Is(err, errNoDomain):
	case err != nil:
		return driver.Started{}, err
	default:
		st, _, err := c.DomainGetState(old, 0)
		if err != nil {
			return driver.Started{}, c.wrap(fmt.Errorf("libvirt: state of domain %s: %w", name, err))
		}
		if active(golibvirt.DomainState(st)) {
			return driver.Started{}, fmt.Errorf("libvirt domain %s is already running", name)
		}
		def.UUID = uuidString(old.UUID)
	}
	doc, err := def.Marshal()
	if err != nil {
		return driver.Started{}, fmt.Errorf("libvirt: domain XML: %w", err)
	}
	if note != "" {
		d.opts.Logger.Warn(note, "machine", s.Name)
	}
	// Not DomainDefineValidate: libvirt 9.0 compiles its RelaxNG schema for
	// each validation, 10 s on this project's machines. It still parses
	// the XML and refuses what it cannot run.
	dom, err := c.DomainDefineXMLFlags(doc, 0)
	if err != nil {
		return driver.Started{}, c.wrap(fmt.Errorf("libvirt: define domain %s: %w", name, err))
	}
	// The last run's rotated console goes: Console shows this run's.
	for i := 1; i <= 3; i++ {
		os.Remove(filepath.Join(s.Dir, SerialLog+"."+strconv.Itoa(i)))
	}
	fwds := hostfwds(s)
	var flags uint32
	if len(fwds) > 0 {
		flags = uint32(golibvirt.DomainStartPaused)
	}
	undo := func(cause error) error {
		// A fresh context: the start's may be what ended.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if uc, err := d.dial(uctx); err == nil {
			if err := uc.DomainDestroyFlags(dom, golibvirt.DomainDestroyDefault); err != nil && !isCode(err, golibvirt.ErrOperationInvalid) {
				cause = errors.Join(cause, fmt.Errorf("libvirt: destroy domain %s after the failed start: %w", name, err))
			}
			uc.close()
		} else {
			cause = errors.Join(cause, err)
		}
		os.Remove(runPath(s.Machine))
		return cause
	}
	if _, err := c.DomainCreateWithFlags(dom, flags); err != nil {
		// libvirtd goes on with a start whose caller left (ctx ended):
		// destroy whatever it started.
		return driver.Started{}, undo(c.wrap(fmt.Errorf("libvirt: start domain %s: %w", name, err)))
	}
	// Written once the domain runs, so a Status meanwhile does not read
	// the last run's end as this one's abort; its time is Status.Since.
	if err := os.WriteFile(runPath(s.Machine), []byte(name+"\n"), 0o600); err != nil {
		return driver.Started{}, undo(fmt.Errorf("libvirt: record the run: %w", err))
	}
	for _, f := range fwds {
		out, err := c.QEMUDomainMonitorCommand(dom, "hostfwd_add "+f.Netdev+" "+f.Rule, hmp)
		if err == nil && strings.TrimSpace(out) != "" {
			err = errors.New(strings.TrimSpace(out))
		}
		if err != nil {
			return driver.Started{}, undo(c.wrap(fmt.Errorf("%s: %w (is the host port in use?)", f.What, err)))
		}
	}
	if len(fwds) > 0 {
		if err := c.DomainResume(dom); err != nil {
			return driver.Started{}, undo(c.wrap(fmt.Errorf("libvirt: resume domain %s after adding its port forwards: %w", name, err)))
		}
	}
	return driver.Started{Accel: accel}, nil
}

// uuidString formats a domain's UUID as libvirt's XML writes it.
func uuidString(u golibvirt.UUID) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// hmp is VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP.
const hmp = 1

// secModels lists the host's security drivers: its primary one
// (NodeGetSecurityModel: selinux, apparmor or none) and DAC, which libvirt
// stacks under it whenever it runs QEMU as another user. (The full list is
// in ConnectGetCapabilities, which costs libvirt 9.0 over a second.)
func secModels(c *conn) ([]string, error) {
	model, _, err := c.NodeGetSecurityModel()
	if err != nil {
		return nil, c.wrap(fmt.Errorf("libvirt: security model: %w", err))
	}
	b := make([]byte, 0, len(model))
	for _, ch := range model {
		if ch == 0 {
			break
		}
		b = append(b, byte(ch))
	}
	return []string{"dac", string(b)}, nil
}

// Status implements driver.Lifecycle, from DomainGetState and its reason
// (see vmState); PID is libvirt's pidfile's, Since when RunFile was written.
func (d *Driver) Status(ctx context.Context, m driver.Machine) (driver.Status, error) {
	c, err := d.dial(ctx)
	if err != nil {
		return driver.Status{}, err
	}
	defer c.close()
	st, reason, err := d.state(c, m)
	if err != nil {
		return driver.Status{}, err
	}
	fi, runErr := os.Stat(runPath(m))
	out := driver.Status{State: vmState(st, reason, runErr == nil)}
	if active(st) {
		out.PID = d.pid(m)
		if runErr == nil {
			out.Since = fi.ModTime()
		}
	}
	return out, nil
}

// pid reads libvirtd's pidfile of the machine's QEMU; 0 when it cannot
// (another URI, not running).
func (d *Driver) pid(m driver.Machine) int {
	if d.ep.socket != DefaultSocket {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(PIDDir, DomainName(m)+".pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// do runs fn on the machine's domain.
func (d *Driver) do(ctx context.Context, m driver.Machine, what string, fn func(*conn, golibvirt.Domain) error) error {
	c, err := d.dial(ctx)
	if err != nil {
		return err
	}
	defer c.close()
	dom, err := d.lookup(c, m)
	if err != nil {
		return err
	}
	if err := fn(c, dom); err != nil {
		return c.wrap(fmt.Errorf("libvirt: %s domain %s: %w", what, dom.Name, err))
	}
	return nil
}

// Pause implements driver.Lifecycle (DomainSuspend).
func (d *Driver) Pause(ctx context.Context, m driver.Machine) error {
	return d.do(ctx, m, "pause", func(c *conn, dom golibvirt.Domain) error { return c.DomainSuspend(dom) })
}

// Resume implements driver.Lifecycle (DomainResume).
func (d *Driver) Resume(ctx context.Context, m driver.Machine) error {
	return d.do(ctx, m, "resume", func(c *conn, dom golibvirt.Domain) error { return c.DomainResume(dom) })
}

// PowerButton implements driver.Lifecycle (DomainShutdownFlags with the
// ACPI power button only, never the guest agent).
func (d *Driver) PowerButton(ctx context.Context, m driver.Machine) error {
	return d.do(ctx, m, "press the power button of", func(c *conn, dom golibvirt.Domain) error {
		return c.DomainShutdownFlags(dom, golibvirt.DomainShutdownAcpiPowerBtn)
	})
}

// PowerOff implements driver.Lifecycle: DomainDestroy, which returns once
// QEMU has exited (virtlogd has the console's last output), and the run
// is recorded as ended cleanly.
func (d *Driver) PowerOff(ctx context.Context, m driver.Machine) error {
	if err := d.destroy(ctx, m, "power off"); err != nil {
		return err
	}
	if err := os.Remove(runPath(m)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("libvirt: %w", err)
	}
	return nil
}

// Kill implements driver.Lifecycle: DomainDestroy (libvirt sends SIGTERM,
// then SIGKILL, and returns once QEMU is gone); the run stays recorded, so
// the machine reads Aborted until Clean.
func (d *Driver) Kill(ctx context.Context, m driver.Machine) error {
	return d.destroy(ctx, m, "kill")
}

func (d *Driver) destroy(ctx context.Context, m driver.Machine, what string) error {
	err := d.do(ctx, m, what, func(c *conn, dom golibvirt.Domain) error {
		err := c.DomainDestroyFlags(dom, golibvirt.DomainDestroyDefault)
		if isCode(err, golibvirt.ErrOperationInvalid) {
			return nil // not running
		}
		return err
	})
	if errors.Is(err, errNoDomain) {
		return nil
	}
	return err
}

// pollInterval is how often WaitExit and Agent ask again.
const pollInterval = 100 * time.Millisecond

// WaitExit implements driver.Lifecycle, polling the domain's state.
func (d *Driver) WaitExit(ctx context.Context, m driver.Machine) error {
	for {
		c, err := d.dial(ctx)
		if err != nil {
			return err
		}
		st, _, err := d.state(c, m)
		c.close()
		if err != nil {
			return err
		}
		if !active(st) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("libvirt domain %s still runs: %w", DomainName(m), ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// Clean implements driver.Lifecycle: it refuses while the domain runs and
// removes RunFile, so an aborted machine reads PoweredOff. libvirtd itself
// cleans a dead domain's runtime state when QEMU exits.
func (d *Driver) Clean(ctx context.Context, m driver.Machine) error {
	c, err := d.dial(ctx)
	if err != nil {
		return err
	}
	st, _, err := d.state(c, m)
	c.close()
	if err != nil {
		return err
	}
	if active(st) {
		return fmt.Errorf("libvirt domain %s is running: power it off before cleaning", DomainName(m))
	}
	if err := os.Remove(runPath(m)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("libvirt: %w", err)
	}
	return nil
}

// Forget implements driver.Lifecycle: it undefines the machine's domain
// (destroying it first should it still run) with its managed save,
// snapshot and checkpoint metadata and NVRAM. Safe to repeat.
func (d *Driver) Forget(ctx context.Context, m driver.Machine) error {
	err := d.do(ctx, m, "undefine", func(c *conn, dom golibvirt.Domain) error {
		if err := c.DomainDestroyFlags(dom, golibvirt.DomainDestroyDefault); err != nil &&
			!isCode(err, golibvirt.ErrOperationInvalid) && !isCode(err, golibvirt.ErrNoDomain) {
			return err
		}
		err := c.DomainUndefineFlags(dom, golibvirt.DomainUndefineManagedSave|golibvirt.DomainUndefineSnapshotsMetadata|
			golibvirt.DomainUndefineNvram|golibvirt.DomainUndefineCheckpointsMetadata)
		if isCode(err, golibvirt.ErrNoDomain) {
			return nil
		}
		return err
	})
	if errors.Is(err, errNoDomain) {
		err = nil
	}
	if err != nil {
		return err
	}
	if err := os.Remove(runPath(m)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("libvirt: %w", err)
	}
	return nil
}

// Console implements driver.Console: the current or last run's console as
// virtlogd kept it, the rotated SerialLog.1 (if any) first; at most 4 MiB
// with virtlogd's default max_size.
func (d *Driver) Console(ctx context.Context, m driver.Machine) ([]byte, error) {
	var out []byte
	for _, name := range []string{SerialLog + ".1", SerialLog} {
		b, err := os.ReadFile(filepath.Join(m.Dir, name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("console: %w", err)
		}
		out = append(out, b...)
	}
	return out, nil
}
