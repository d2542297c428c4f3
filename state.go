package vmfest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/store"
)

// status asks the machine's driver for its run state; a running machine
// whose power button was pressed, by this process or another, reads as
// stopping until it powers off or the stop's deadline passes.
func (m *localMachine) status(ctx context.Context, r record) (driver.Status, error) {
	d, err := m.drv(r)
	if err != nil {
		return driver.Status{}, err
	}
	st, err := d.Status(ctx, m.ref(r))
	if err != nil {
		return driver.Status{}, fmt.Errorf("machine %s: %w", m.name, err)
	}
	if st.State == Running && isStopping(m.dir()) {
		st.State = Stopping
	}
	return savedStatus(st, hasSavedState(m.dir())), nil
}

// savedStatus is the machine's state given its driver's status and
// whether its saved-state file is there (see save.go for the protocol):
//
//   - file, and no hypervisor (powered off, or killed: aborted): saved;
//   - file, and a hypervisor holding a state it wrote or reads (driver
//     Saved): saved;
//   - driver Saved and no file: a save that never committed (the file was
//     not yet renamed into place), so the guest is whole in a hypervisor
//     that holds it stopped: paused, and Resume continues it;
//   - file, and a guest that runs or is paused: a resume that finished
//     (its guest may have run), so the file is stale; the state is the
//     driver's, and the next locked operation removes the file.
func savedStatus(st driver.Status, file bool) driver.Status {
	switch {
	case st.State == Saved && !file:
		st.State = Paused
	case file && (st.State == PoweredOff || st.State == Aborted):
		st.State = Saved
	}
	return st
}

// savedStatePath is the machine directory's saved-state file.
func savedStatePath(dir string) string { return filepath.Join(dir, store.SavedStateFile) }

func hasSavedState(dir string) bool {
	_, err := os.Lstat(savedStatePath(dir))
	return err == nil
}

// markStopping records that the power button was pressed and the guest is
// expected to be off by until, so every process reports it as stopping.
func markStopping(dir string, until time.Time) error {
	return os.WriteFile(filepath.Join(dir, store.StoppingFile), []byte(until.UTC().Format(time.RFC3339Nano)), 0o644)
}

// clearStopping removes the stopping mark.
func clearStopping(dir string) { os.Remove(filepath.Join(dir, store.StoppingFile)) }

func isStopping(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, store.StoppingFile))
	if err != nil {
		return false
	}
	until, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(string(data)))
	return err == nil && time.Now().Before(until)
}

// roundDuration rounds a duration for a message: to the millisecond below
// a second, else to 100 ms.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}
