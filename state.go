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
	return st, nil
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
