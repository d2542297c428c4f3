package vmfest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/store"
)

// Saved state, and how a crash at any moment leaves a machine in its old
// state or its new one:
//
// Save has the driver write the machine's state to saved.state.new (synced)
// while the hypervisor holds the guest stopped (QEMU: run state
// postmigrate), renames it to saved.state (the commit point; the directory
// synced), and only then ends the hypervisor. Before the rename the machine
// reads as it was (a QEMU in postmigrate without the file reads paused and
// continues with Resume); after it, as saved, whether or not the hypervisor
// still runs.
//
// Start of a saved machine ends a hypervisor still holding the state, has
// the driver load the file with the guest's CPUs stopped, removes the file
// (the commit point) and only then continues the guest. So the guest never
// runs while the file exists, and a file beside a hypervisor that holds a
// loaded guest is stale: the machine reads as that guest's state, and the
// next locked operation removes the file (machine.go, locked).

// A clone of a saved machine's memory template has its saved state in two
// files: saved.state without the RAM and saved.ram, hard links of the
// template's (clone.go). saved.state is the commit point of both: a
// discard removes the template and saved.ram only after it, and a save
// removes leftovers of an earlier saved state before it writes.

// savedMemoryPath is the machine directory's saved RAM file.
func savedMemoryPath(dir string) string { return filepath.Join(dir, store.SavedMemoryFile) }

func hasSavedMemory(dir string) bool {
	_, err := os.Lstat(savedMemoryPath(dir))
	return err == nil
}

// savedMemory is the memory template a start from a saved state maps: the
// machine's saved RAM file beside its saved state, if it has one.
func savedMemory(s *starting) string {
	if s.incoming == "" || !hasSavedMemory(s.m.dir()) {
		return ""
	}
	return savedMemoryPath(s.m.dir())
}

// savingPath is where a save writes before it commits.
func savingPath(dir string) string { return savedStatePath(dir) + ".new" }

// clockTimeout bounds setting the guest's clock after a resume.
const clockTimeout = 2 * time.Second

// Save implements Machine.
func (m *localMachine) Save(ctx context.Context) error {
	return m.save(ctx, nil)
}

// checkSaver says whether d saves machines, as ErrUnsupported when not.
func checkSaver(d driver.Driver) error {
	info := d.Info()
	if _, ok := d.(driver.Saver); !ok || !info.Features.MemorySnapshots {
		return fmt.Errorf("%w: the %s driver cannot save a machine's memory (saved state)", driver.ErrUnsupported, info.Name)
	}
	return nil
}

// save is Save; at, when set (by crash tests), is called at each named
// point where a crash leaves a distinct state.
func (m *localMachine) save(ctx context.Context, at func(point string)) error {
	point := func(p string) {
		if at != nil {
			at(p)
		}
	}
	return m.locked(ctx, func(r record, st State) error {
		if err := m.need("save", st, Running, Paused); err != nil {
			return err
		}
		d, err := m.drv(r)
		if err != nil {
			return err
		}
		if err := checkSaver(d); err != nil {
			return fmt.Errorf("save machine %s: %w", m.name, err)
		}
		dir, ref := m.dir(), m.ref(r)
		tmp := savingPath(dir)
		if err := removeSavedLeftovers(dir); err != nil {
			return fmt.Errorf("save machine %s: %w", m.name, err)
		}
		if err := d.(driver.Saver).Save(ctx, ref, tmp); err != nil {
			return fmt.Errorf("save machine %s: %w", m.name, err)
		}
		point("save:written")
		if err := commitSave(dir); err != nil {
			os.Remove(tmp)
			if st == Running {
				if rerr := d.Resume(context.WithoutCancel(ctx), ref); rerr != nil {
					err = fmt.Errorf("%w; and the guest could not be continued: %w", err, rerr)
				}
			}
			return fmt.Errorf("save machine %s: %w", m.name, err)
		}
		point("save:committed")
		if err := m.endSavedRun(ctx, d, r); err != nil {
			return fmt.Errorf("save machine %s: the state is saved, but: %w", m.name, err)
		}
		point("save:ended")
		clearStopping(dir)
		m.settleNetworks(ctx, r)
		return nil
	})
}

// removeSavedLeftovers removes what an earlier saved state may have left
// beside a machine that is not saved (a crash in its discard): a save's
// .new, a saved RAM file, a memory template, whole or half made.
func removeSavedLeftovers(dir string) error {
	var errs []error
	for _, p := range []string{savingPath(dir), savedMemoryPath(dir)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	tpls, _ := filepath.Glob(filepath.Join(dir, store.TemplateTempPrefix+"*"))
	for _, p := range append(tpls, filepath.Join(dir, store.TemplateDir)) {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// commitSave renames the written state into place, durably.
func commitSave(dir string) error {
	if err := os.Rename(savingPath(dir), savedStatePath(dir)); err != nil {
		return err
	}
	return store.SyncDir(dir)
}

// endSavedRun ends a hypervisor that holds the machine's saved state (or
// whatever else is left of the last run) and cleans up after it; the
// saved-state file stays.
func (m *localMachine) endSavedRun(ctx context.Context, d driver.Driver, r record) error {
	ref := m.ref(r)
	if st, err := d.Status(ctx, ref); err != nil {
		return err
	} else if st.State != PoweredOff && st.State != Aborted {
		if err := d.PowerOff(ctx, ref); err != nil {
			return err
		}
	}
	return d.Clean(ctx, ref)
}

// discardSaved ends a saved machine (power-down of a saved machine): its
// hypervisor, if one still holds the state, then the file. A crash between
// the two leaves it saved.
func (m *localMachine) discardSaved(ctx context.Context, d driver.Driver, r record, op string) error {
	if err := m.endSavedRun(ctx, d, r); err != nil {
		return fmt.Errorf("%s machine %s: %w", op, m.name, err)
	}
	if err := discardSavedState(m.dir()); err != nil {
		return fmt.Errorf("%s machine %s: %w", op, m.name, err)
	}
	clearStopping(m.dir())
	m.settleNetworks(ctx, r)
	return nil
}

// discardSavedState removes the saved-state file, durably, and then what
// goes with it: its memory template, a saved RAM file, a save's leftover
// .new. The memory template goes first (a crash then leaves the saved
// state, whose next clone makes the template again) and a saved RAM file
// after the state (a crash then leaves no state without its RAM). A
// machine started from a template or a saved RAM file keeps its mapping
// of the file.
func discardSavedState(dir string) error {
	var errs []error
	if err := os.RemoveAll(filepath.Join(dir, store.TemplateDir)); err != nil {
		errs = append(errs, err)
	}
	for _, p := range []string{savedStatePath(dir), savingPath(dir), savedMemoryPath(dir)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("discard the saved state: %w", err)
	}
	return store.SyncDir(dir)
}

// discardResumed is the start step that commits a resume: the state is
// loaded, the guest still stopped, and the file goes. From here on a
// failure must not undo the start (the file is gone): the machine is the
// resumed one.
func discardResumed(ctx context.Context, s *starting) error {
	if s.incoming == "" {
		return nil
	}
	if err := discardSavedState(s.m.dir()); err != nil {
		return err
	}
	s.undo = nil
	return nil
}

// continueResumed continues a guest that was running when it was saved; a
// guest saved paused stays paused.
func continueResumed(ctx context.Context, s *starting) error {
	if s.restored != Running {
		return nil
	}
	if err := s.drv.Resume(ctx, s.m.ref(s.r)); err != nil {
		return fmt.Errorf("the state is loaded but the guest could not be continued (it is paused; resume it): %w", err)
	}
	return nil
}

// setClock sets a resumed guest's clock to the host's (guest agent
// guest-set-time): its clock stood still while it was saved. Best effort,
// bounded by clockTimeout; a guest without an agent, or one whose agent
// lacks the command, keeps its clock and a debug line says so. A clone
// still to be re-identified has its clock set in the re-identification's
// agent session instead (setClockWith), which saves a connection.
func (m *localMachine) setClock(ctx context.Context, d driver.Driver, r record) {
	if !d.Info().Features.GuestAgent {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, clockTimeout)
	defer cancel()
	a, err := d.Agent(ctx, m.ref(r))
	if err != nil {
		m.l.log.Debug("the resumed guest's clock was not set", "machine", m.name, "err", err)
		return
	}
	defer a.Close()
	m.setClockWith(ctx, a)
}

// setClockWith is setClock through the connected agent a.
func (m *localMachine) setClockWith(ctx context.Context, a driver.Agent) {
	ctx, cancel := context.WithTimeout(ctx, clockTimeout)
	defer cancel()
	if _, err := a.Execute(ctx, "guest-set-time", map[string]int64{"time": time.Now().UnixNano()}); err != nil {
		m.l.log.Debug("the resumed guest's clock was not set", "machine", m.name, "err", err)
		return
	}
	m.l.log.Debug("the resumed guest's clock was set", "machine", m.name)
}
