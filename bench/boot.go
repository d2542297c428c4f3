package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/qemu"
	"github.com/vmfest/vmfest/internal/netnstest"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// bootRaw runs the machine's own QEMU command line by hand (no vmfest) in
// dir, on a fresh overlay of the same base, and returns the time until its
// guest agent answers.
func bootRaw(ctx context.Context, info vmfest.Info, accel, dir string) (time.Duration, error) {
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", info.BaseImage, disk).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu-img: %v: %s", err, out)
	}
	cfg := qemu.Config{Name: "raw", Dir: dir, Hardware: info.HardwareSpec, Disk: qemu.Disk{Path: disk, Format: "qcow2", BackingPath: info.BaseImage, BackingFormat: "qcow2"}, Accel: accel}
	// A host-only NIC gets a tap of its own, on no bridge (the bench runs
	// in its own network namespace then): the guest's boot does not wait
	// for its network.
	cfg.NICs = make([]qemu.NICBackend, len(info.HardwareSpec.Network))
	for i, n := range info.HardwareSpec.Network {
		if n.AttachmentType != spec.AttachHostOnly {
			continue
		}
		tap := fmt.Sprintf("vmfbraw%d", i)
		if out, err := exec.Command("ip", "tuntap", "add", "dev", tap, "mode", "tap").CombinedOutput(); err != nil {
			return 0, fmt.Errorf("ip tuntap add %s: %v: %s", tap, err, out)
		}
		defer exec.Command("ip", "link", "del", tap).Run()
		cfg.NICs[i].Tap = tap
	}
	args, err := cfg.Args()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if out, err := exec.CommandContext(ctx, "qemu-system-x86_64", args...).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu: %v: %s", err, out)
	}
	defer func() {
		qemu.Kill(dir)
		qemu.WaitExit(context.Background(), dir)
	}()
	a, err := qemu.DialAgent(ctx, cfg.Path(qemu.QGASocket))
	if err != nil {
		return 0, err
	}
	d := time.Since(t0)
	a.Close()
	return d, nil
}

func (b *bench) startToReady(ctx context.Context) error {
	reps := b.reps(5, 1)
	l, cleanup, err := b.server()
	if err != nil {
		return err
	}
	defer cleanup()
	img, _ := b.imageChoice(ctx, l)
	m, err := l.Instance(ctx, "boot", img, natOnly(512))
	if err != nil {
		return err
	}
	rawDir, err := os.MkdirTemp("", "vmfr")
	if err != nil {
		return err
	}
	defer os.RemoveAll(rawDir)
	var ours, theirs []time.Duration
	accel := ""
	for i := 0; i < reps; i++ {
		bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		t0 := time.Now()
		if err := m.Start(bctx); err != nil {
			cancel()
			return err
		}
		if err := m.WaitReady(bctx); err != nil {
			cancel()
			return err
		}
		ours = append(ours, time.Since(t0))
		info, err := m.Info(bctx)
		if err != nil {
			cancel()
			return err
		}
		accel = info.Accel
		if err := m.PowerDown(bctx); err != nil {
			cancel()
			return err
		}
		os.Remove(filepath.Join(rawDir, "disk.qcow2"))
		d, err := bootRaw(bctx, info, accel, rawDir)
		cancel()
		if err != nil {
			return fmt.Errorf("raw QEMU: %w", err)
		}
		theirs = append(theirs, d)
	}
	mo, mt := median(ours), median(theirs)
	b.report.ready[1] = mo
	s := b.report.section("Start to ready (the tiny image, 512 MiB, one NAT NIC: `Start` until the guest agent answers)")
	s.add(row{Metric: fmt.Sprintf("start to ready under %s, median of %d", accel, reps), Value: ms(mo), Baseline: ms(mt) + " (the same QEMU command line run by hand)", Ratio: ratio(mo, mt), Target: "≤ 1.10× baseline", Met: met(float64(mo) <= 1.10*float64(mt))})
	s.note("The guest boots from the pc machine's IDE disk, the storage a spec without one gets (VMFest's); SeaBIOS reads the 14 MB kernel through IDE PIO, which dominates the boot under TCG. KVM figures: no host with working KVM was available for this run.")
	// Saved state, clones and snapshots on the micro machine, against its
	// own cold boot: the fast one, which the ratios must beat.
	if err := b.microBoot(ctx, s, reps, func(m vmfest.Machine, cold time.Duration, accel string) error {
		if err := b.savedStart(ctx, s, m, cold, accel, reps); err != nil {
			return fmt.Errorf("start of a saved machine: %w", err)
		}
		if err := b.cloneSaved(ctx, s, m, cold, accel, reps); err != nil {
			return fmt.Errorf("clone of a saved machine: %w", err)
		}
		if err := b.snapshotRunning(ctx, s, m, accel, reps); err != nil {
			return fmt.Errorf("snapshot of a running machine: %w", err)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("cold boot on micro: %w", err)
	}

	// N machines at once, for the plot.
	for _, n := range []int{2, 4} {
		if b.quick && n > 2 {
			break
		}
		var group []vmfest.Machine
		for i := 0; i < n; i++ {
			mm, err := l.Instance(ctx, fmt.Sprintf("n%d-%d", n, i), img, natOnly(256))
			if err != nil {
				return err
			}
			group = append(group, mm)
		}
		bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		t0 := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, mm := range group {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if errs[i] = mm.Start(bctx); errs[i] == nil {
					errs[i] = mm.WaitReady(bctx)
				}
			}()
		}
		wg.Wait()
		d := time.Since(t0)
		for _, mm := range group {
			mm.PowerDown(bctx)
			mm.Destroy(bctx)
		}
		cancel()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		b.report.ready[n] = d
		s.add(row{Metric: fmt.Sprintf("%d machines started at once, until all ready", n), Value: ms(d), Baseline: ms(mo) + " (one machine)", Ratio: ratio(d, mo)})
	}
	return nil
}

// booted runs fn reps times, each round bounded by 3 minutes, on machine m
// started and answering through its guest agent (fn leaves it as the next
// round can start it again).
func booted(ctx context.Context, m vmfest.Machine, reps int, fn func(ctx context.Context, i int) error) error {
	for i := 0; i < reps; i++ {
		bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		err := m.Start(bctx)
		if err == nil {
			err = m.WaitReady(bctx)
		}
		if err == nil {
			err = fn(bctx, i)
		}
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// savedStart measures Start of the saved machine m (512 MiB, booted and
// saved anew each time) until it runs and until its guest agent answers,
// beside cold, the median cold boot of the same machine in the same run.
func (b *bench) savedStart(ctx context.Context, s *section, m vmfest.Machine, cold time.Duration, accel string, reps int) error {
	var running, ready []time.Duration
	var size int64
	if err := booted(ctx, m, reps, func(bctx context.Context, i int) error {
		if err := m.Save(bctx); err != nil {
			return err
		}
		info, err := m.Info(bctx)
		if err != nil {
			return err
		}
		if fi, err := os.Stat(filepath.Join(filepath.Dir(info.Disk), store.SavedStateFile)); err == nil {
			size = fi.Size()
		}
		t0 := time.Now()
		if err := m.Start(bctx); err != nil {
			return err
		}
		running = append(running, time.Since(t0))
		if err := m.WaitReady(bctx); err != nil {
			return err
		}
		ready = append(ready, time.Since(t0))
		return m.PowerDown(bctx)
	}); err != nil {
		return err
	}
	r, a := median(running), median(ready)
	what := fmt.Sprintf("under %s, median of %d; the state file %d MiB", accel, reps, size>>20)
	s.add(row{Metric: "start of a saved machine until running, " + what, Value: ms(r), Baseline: ms(cold) + " (a cold boot of the same machine, above)", Ratio: ratio(r, cold), Target: "≤ 300 ms", Met: met(r <= 300*time.Millisecond)})
	s.add(row{Metric: "start of a saved machine until its agent answers", Value: ms(a), Baseline: ms(cold) + " (a cold boot of the same machine, above)", Ratio: ratio(a, cold), Target: "≤ 500 ms and ≤ 0.10× baseline", Met: met(a <= 500*time.Millisecond && float64(a) <= 0.10*float64(cold))})
	s.note("A saved machine resumes from its memory image (QMP migrate to a file, QEMU -incoming from it): the time is QEMU's start plus reading back the guest's used memory, and does not depend on how long the guest took to boot.")
	return nil
}

// snapshotRunning measures TakeSnapshot of the running machine m (512
// MiB, disk and memory) and a restore of it, beside the time its memory
// state takes to write as a saved state (Save) in the same run.
func (b *bench) snapshotRunning(ctx context.Context, s *section, m vmfest.Machine, accel string, reps int) error {
	var take, restore, save []time.Duration
	if err := booted(ctx, m, reps, func(bctx context.Context, i int) error {
		name := fmt.Sprintf("bench-%d", i)
		t0 := time.Now()
		if _, err := m.TakeSnapshot(bctx, name); err != nil {
			return err
		}
		take = append(take, time.Since(t0))
		t0 = time.Now()
		if err := m.RestoreSnapshot(bctx, name); err != nil {
			return err
		}
		restore = append(restore, time.Since(t0))
		if err := m.DeleteSnapshot(bctx, name); err != nil {
			return err
		}
		t0 = time.Now()
		if err := m.Save(bctx); err != nil {
			return err
		}
		save = append(save, time.Since(t0))
		return m.PowerDown(bctx)
	}); err != nil {
		return err
	}
	t, r, sv := median(take), median(restore), median(save)
	s.add(row{Metric: fmt.Sprintf("`snapshot create` of a running 512 MiB machine (disk and memory), under %s, median of %d", accel, reps), Value: ms(t), Baseline: ms(sv) + " (Save of the same machine: its memory to a file)", Ratio: ratio(t, sv), Target: "≤ 2 s", Met: met(t <= 2*time.Second)})
	s.add(row{Metric: "`snapshot restore` of it while running (back to the moment it was taken)", Value: ms(r), Baseline: ms(sv) + " (Save, as above)", Ratio: ratio(r, sv)})
	s.note("A snapshot is QEMU's snapshot-save job into the machine's own overlay (internal qcow2 snapshot, memory included), the guest paused meanwhile; a restore is snapshot-load. Neither touches the base image.")
	return nil
}

// cloneSaved measures Clone of the saved machine m (saved once) until the
// clone's agent answers with its new host name and its NICs have
// addresses, beside cold, the median cold boot of the same machine in the
// same run. The first clone of the saved state also makes its memory
// template: it is reported on its own, and the row is the median of the
// clones after it.
func (b *bench) cloneSaved(ctx context.Context, s *section, m vmfest.Machine, cold time.Duration, accel string, reps int) error {
	var first time.Duration
	var ready []time.Duration
	if err := booted(ctx, m, 1, func(bctx context.Context, _ int) error {
		// Saved once its boot is over (every NIC has its address), as a
		// user saves a machine to clone: a clone of a machine saved
		// while still booting would first finish that boot.
		if _, err := m.Exec(bctx, vmfest.ExecRequest{Command: []string{"sh", "-c", addressed}}); err != nil {
			return err
		}
		if err := m.Save(bctx); err != nil {
			return err
		}
		for i := 0; i <= reps; i++ {
			d, err := cloneReady(bctx, m, fmt.Sprintf("clone%d", i))
			if err != nil {
				return err
			}
			if i == 0 {
				first = d
			} else {
				ready = append(ready, d)
			}
		}
		return m.PowerDown(bctx)
	}); err != nil {
		return err
	}
	r := median(ready)
	s.add(row{Metric: fmt.Sprintf("clone of a saved machine until the clone's agent answers with its new host name and addresses, under %s, median of %d", accel, reps), Value: ms(r), Baseline: ms(cold) + " (a cold boot of the same machine, above)", Ratio: ratio(r, cold), Target: "≤ 1 s and ≤ 0.15× baseline", Met: met(r <= time.Second && float64(r) <= 0.15*float64(cold))})
	s.note("A clone of a saved machine copies its overlay (reflink or sparse copy), links the saved state's memory template, resumes from it and is re-identified through its guest agent, which in the tiny guest does it in one command of its own (vmfest-reidentify; with qemu-ga vmfest runs a script through guest-exec instead): the host name and the clock are set and each NIC but nat takes the clone's MAC, and the guest's DHCP client (in the tiny guest the agent's own, which follows the MAC change) leases the clone's addresses at once: until then the clone's taps drop what the guest sends from the source's MAC, and its links stay up. The time includes those DHCP exchanges and ends when the clone's agent answers guest-get-host-name with the new name and guest-network-get-interfaces with an IPv4 address on each NIC. Under TCG the resumed guest translates anew every code path it runs, and that is most of the time: QEMU's start and the state's load take about 45 ms, the agent's first answer about 55-80 ms more, its command 80-120 ms (the DHCP exchange starts during it) and the address 40-55 ms after that (measured with vmfest -v); under KVM each would be a few ms. The first clone of a saved state also makes the template (its RAM in a file): it took %s here.", ms(first))
	return nil
}

// addressed is a guest command that waits (at most 5 s) until each ethN
// has an IPv4 address, then prints "addressed" if they all have one, and
// the addresses.
const addressed = "i=0; while [ $i -lt 250 ]; do n=0; for d in /sys/class/net/eth*; do ip -4 -o addr show dev ${d##*/} | grep -q inet || n=1; done; [ $n = 0 ] && break; sleep 0.02; i=$((i + 1)); done; [ $n = 0 ] && echo addressed; ip -4 -o addr show"

// cloneReady clones m as name, waits until the clone's guest agent answers
// with its new host name and an IPv4 address on each NIC, and destroys
// it; it returns the time from Clone to that answer. It asks the agent
// itself (guest-get-host-name, guest-network-get-interfaces), as the
// target says: a command run in the guest would add the start of a shell
// and its programs, which a resumed clone translates afresh under TCG.
func cloneReady(ctx context.Context, m vmfest.Machine, name string) (time.Duration, error) {
	t0 := time.Now()
	c, err := m.Clone(ctx, name)
	if err != nil {
		return 0, err
	}
	defer func() {
		c.PowerDown(ctx)
		c.Destroy(ctx)
	}()
	info, err := c.Info(ctx)
	if err != nil {
		return 0, err
	}
	a, err := qemu.DialAgent(ctx, filepath.Join(filepath.Dir(info.Disk), store.QGASocket))
	if err != nil {
		return 0, err
	}
	defer a.Close()
	// A NAT NIC's DHCP may still be on its way when Clone returns (it
	// waits for host-only addresses only).
	for {
		host, missing, err := agentIdentity(ctx, a)
		if err != nil {
			return 0, err
		}
		if host == name && missing == "" {
			return time.Since(t0), nil
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("the clone's agent says host name %q, want %s; %s", host, name, missing)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// agentIdentity asks the guest agent for the host name and says which
// ethN, if any, has no IPv4 address yet ("" when each has one).
func agentIdentity(ctx context.Context, a *qemu.Agent) (string, string, error) {
	raw, err := a.Execute(ctx, "guest-get-host-name", nil)
	if err != nil {
		return "", "", err
	}
	var h struct {
		Name string `json:"host-name"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return "", "", err
	}
	ifs, err := driver.Interfaces(ctx, a)
	if err != nil {
		return "", "", err
	}
	for _, i := range ifs {
		if !strings.HasPrefix(i.Name, "eth") {
			continue
		}
		v4 := false
		for _, a := range i.IPAddresses {
			v4 = v4 || a.Type == "ipv4"
		}
		if !v4 {
			return h.Name, i.Name + " has no IPv4 address yet", nil
		}
	}
	return h.Name, "", nil
}

// pss reads a process's proportional set size in KiB (smaps_rollup): its
// resident pages, each divided by the number of processes that map it.
func pss(pid int) int64 { return procKiB(pid, "smaps_rollup", "Pss:") }

// clonesShared is the number of clones (and of cold-booted machines) the
// memory-sharing row runs at once.
const clonesShared = 10

// cloneMemory measures the total PSS of clonesShared running clones of one
// saved 512 MiB machine beside that of as many cold-booted ones, each
// group measured once all of it runs (the cold ones once each agent
// answered) and has idled a few seconds.
func (b *bench) cloneMemory(ctx context.Context) error {
	l, cleanup, err := b.server()
	if err != nil {
		return err
	}
	defer cleanup()
	img, _ := b.imageChoice(ctx, l)
	idle := 5 * time.Second
	total := func(ms []vmfest.Machine) (pssKiB, rssKiB int64, err error) {
		time.Sleep(idle)
		for _, m := range ms {
			info, err := m.Info(ctx)
			if err != nil {
				return 0, 0, err
			}
			pssKiB += pss(info.PID)
			rssKiB += rss(info.PID)
		}
		return pssKiB, rssKiB, nil
	}
	end := func(ms []vmfest.Machine) {
		for _, m := range ms {
			m.PowerDown(ctx)
			m.Destroy(ctx)
		}
	}
	src, err := l.Instance(ctx, "src", img, natOnly(512))
	if err != nil {
		return err
	}
	if err := src.Start(ctx); err != nil {
		return err
	}
	if err := src.WaitReady(ctx); err != nil {
		return err
	}
	if err := src.Save(ctx); err != nil {
		return err
	}
	var clones []vmfest.Machine
	defer func() { end(clones) }()
	var took []time.Duration
	for i := range clonesShared {
		t0 := time.Now()
		c, err := src.Clone(ctx, fmt.Sprintf("clone%d", i))
		if err != nil {
			return err
		}
		took = append(took, time.Since(t0))
		clones = append(clones, c)
	}
	cp, cr, err := total(clones)
	if err != nil {
		return err
	}
	end(clones)
	clones = nil
	var cold []vmfest.Machine
	defer func() { end(cold) }()
	for i := range clonesShared {
		m, err := l.Instance(ctx, fmt.Sprintf("cold%d", i), img, natOnly(512))
		if err != nil {
			return err
		}
		cold = append(cold, m)
		if err := m.Start(ctx); err != nil {
			return err
		}
		if err := m.WaitReady(ctx); err != nil {
			return err
		}
	}
	bp, br, err := total(cold)
	if err != nil {
		return err
	}
	mib := func(k int64) string { return fmt.Sprintf("%.0f MiB", float64(k)/1024) }
	s := b.report.section("Memory of clones (the tiny image, 512 MiB, one NAT NIC)")
	s.add(row{Metric: fmt.Sprintf("total PSS of %d running clones of one saved machine", clonesShared), Value: mib(cp) + " (RSS " + mib(cr) + ")",
		Baseline: mib(bp) + fmt.Sprintf(" (%d cold-booted machines, RSS ", clonesShared) + mib(br) + ")", Ratio: fmt.Sprintf("%.2f×", float64(cp)/float64(bp)),
		Target: "≤ 0.50× baseline", Met: met(float64(cp) <= 0.5*float64(bp))})
	s.note("Each group is measured %s after all of it runs. The first clone makes the source's memory template (its RAM in a file); every clone maps that file private, so the pages neither writes stay one copy in the page cache, counted once across the clones' PSS. What is left of a clone's PSS is its own: the guest RAM it wrote, QEMU's heap and, under TCG, its translation cache (tens of MiB; under KVM there is none). Clone times here: first %s, then a median of %s.", idle, ms(took[0]), ms(median(took[1:])))
	return nil
}

// rss reads a process's resident set size in KiB.
func rss(pid int) int64 { return procKiB(pid, "status", "VmRSS:") }

// procKiB reads the "key N kB" line of /proc/PID/file; 0 if there is none.
func procKiB(pid int, file, key string) int64 {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), file))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, key); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// children counts the live processes whose parent is pid, QEMU's
// excepted: in the bench's PID namespace the bench is init, the parent of
// every machine's (detached) QEMU and of the zombies of those that ended.
func children(pid int) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	n := 0
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		open, end := strings.IndexByte(string(data), '('), strings.LastIndexByte(string(data), ')')
		if open < 0 || end < open {
			continue
		}
		comm := string(data[open+1 : end])
		f := strings.Fields(string(data[end+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && f[0] != "Z" && !strings.HasPrefix(comm, "vmfest-") && !strings.HasPrefix(comm, "qemu-system") {
			n++
		}
	}
	return n
}

func (b *bench) footprint(ctx context.Context) error {
	l, cleanup, err := b.server()
	if err != nil {
		return err
	}
	defer cleanup()
	img, _ := b.imageChoice(ctx, l)
	s := b.report.section("Footprint (idle tiny guest, 10 s after ready)")
	idle := 10 * time.Second
	if b.quick {
		idle = 2 * time.Second
	}
	for _, mem := range []int{128, 256, 512} {
		m, err := l.Instance(ctx, fmt.Sprintf("fp%d", mem), img, natOnly(mem))
		if err != nil {
			return err
		}
		bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		if err := m.Start(bctx); err != nil {
			cancel()
			return err
		}
		if err := m.WaitReady(bctx); err != nil {
			cancel()
			return err
		}
		time.Sleep(idle)
		info, _ := m.Info(bctx)
		kib := rss(info.PID)
		kids := children(info.PID)
		m.PowerDown(bctx)
		cancel()
		s.add(row{Metric: fmt.Sprintf("QEMU RSS, %d MiB guest", mem), Value: fmt.Sprintf("%.0f MiB", float64(kib)/1024)})
		if kids != 0 {
			s.note("QEMU of the %d MiB guest had %d child processes", mem, kids)
		}
	}
	s.note("RSS barely follows the guest's memory size: under TCG most of it is QEMU's translation cache and the guest pages the kernel and its initramfs touch (lowering tb-size to 32 MiB saved about 45 MiB and did not change the boot time, so the default was kept). Under KVM there is no translation cache.")
	s.add(row{Metric: "resident processes per machine besides QEMU", Value: strconv.Itoa(children(os.Getpid())), Target: "0", Met: met(children(os.Getpid()) == 0)})
	s.note("QEMU daemonizes (-daemonize): it is reparented away from vmfest, and no vmfest process stays per machine; the number above counts this benchmark process's own children while the guests ran and after.")
	return nil
}

// microBoot adds the cold boot on the micro model's storage (the boot disk
// on virtio, the seed in the IDE dvd drive), its two NICs on NAT (micro's
// host-only NIC needs a host bridge), beside the same QEMU command line run
// by hand (which has no seed).
// microBoot measures cold boots of a machine on the micro hardware model
// (its NICs on NAT: the bench touches no host network), then hands that
// machine, powered off, and its median cold boot to then.
func (b *bench) microBoot(ctx context.Context, s *section, reps int, then func(m vmfest.Machine, cold time.Duration, accel string) error) error {
	l, cleanup, err := b.server()
	if err != nil {
		return err
	}
	defer cleanup()
	img, _ := b.imageChoice(ctx, l)
	// micro as it is (a host-only and a NAT NIC) inside the bench's own
	// network namespace; outside one (not root), its NICs on NAT.
	hw := spec.BuiltinHardware()["micro"]
	nics := "a host-only and a NAT NIC"
	if !netnstest.Inside() {
		for i := range hw.Network {
			hw.Network[i] = spec.NIC{AttachmentType: spec.AttachNAT, AdapterType: spec.AdapterVirtio}
		}
		nics = "its NICs on NAT (not root: no network namespace for host-only)"
	}
	m, err := l.Instance(ctx, "micro", img, vmfest.HardwareSpec(hw))
	if err != nil {
		return err
	}
	rawDir, err := os.MkdirTemp("", "vmfr")
	if err != nil {
		return err
	}
	defer os.RemoveAll(rawDir)
	var ours, theirs []time.Duration
	accel := ""
	for range reps {
		bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		d, info, err := coldBoot(bctx, m)
		if err == nil {
			accel = info.Accel
			ours = append(ours, d)
			os.Remove(filepath.Join(rawDir, "disk.qcow2"))
			d, err = bootRaw(bctx, info, accel, rawDir)
			theirs = append(theirs, d)
		}
		cancel()
		if err != nil {
			return err
		}
	}
	mo, mt := median(ours), median(theirs)
	s.add(row{Metric: fmt.Sprintf("cold boot on micro (boot disk on virtio; %s), start to ready under %s, median of %d", nics, accel, reps), Value: ms(mo), Baseline: ms(mt) + " (the same QEMU command line run by hand)", Ratio: ratio(mo, mt),
		Target: "≤ 2.5 s, ≤ 1.10× baseline", Met: met(mo <= 2500*time.Millisecond && float64(mo) <= 1.10*float64(mt))})
	s.note("The built-in models boot from [VirtIO Controller, 0]: SeaBIOS reads the 19 MB of kernel and initramfs from a virtio disk in about 0.3 s, against about 2.5 s by IDE PIO (docs/images.md). The rows below (saved state, clones, snapshots) run on this machine, against this cold boot.")
	return then(m, mo, accel)
}

// coldBoot starts m, waits for its agent and powers it down; it returns
// the time from Start until the agent answered, and m's Info.
func coldBoot(ctx context.Context, m vmfest.Machine) (time.Duration, vmfest.Info, error) {
	t0 := time.Now()
	if err := m.Start(ctx); err != nil {
		return 0, vmfest.Info{}, err
	}
	if err := m.WaitReady(ctx); err != nil {
		return 0, vmfest.Info{}, err
	}
	d := time.Since(t0)
	info, err := m.Info(ctx)
	if err != nil {
		return 0, info, err
	}
	return d, info, m.PowerDown(ctx)
}
