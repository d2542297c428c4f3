package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vmfest/vmfest/driver"
)

// A saved-state file is a header of savedHeaderSize bytes — savedMagic, a
// line of JSON (savedHeader), zero padding — followed by QEMU's migration
// stream as `migrate` wrote it. QEMU 7.2 has no file: migration URI, so
// vmfest opens the file itself and hands QEMU the descriptor (fd:), already
// past the header, both ways. The header keeps what the stream does not say
// plainly: whether the guest ran when it was saved.
const (
	savedMagic      = "VMFEST-SAVED-STATE 1\n"
	savedHeaderSize = 4096
	// saveFD is the name the save's descriptor has inside QEMU (getfd).
	saveFD = "vmfest-save"
	// incomingFD is the descriptor a resuming QEMU reads its state from:
	// the first of exec's ExtraFiles.
	incomingFD = 3
)

type savedHeader struct {
	// State is the machine's state when it was saved: running or paused.
	State driver.State `json:"state"`
	// Saved is when.
	Saved time.Time `json:"saved"`
	// SharedMemory: the stream leaves the guest's RAM out (migration
	// capability x-ignore-shared); it is in the memory template's RAM
	// file beside it (Template, StartSpec.MemoryTemplate).
	SharedMemory bool `json:"shared-memory,omitempty"`
	// PCI is the PCI address of each device (by id) when the state was
	// saved (query-pci), which a resume pins (Config.PCI). A state of an
	// older vmfest has none: its devices are where they were put at start.
	PCI map[string]string `json:"pci,omitempty"`
}

func writeSavedHeader(f *os.File, h savedHeader) error {
	js, err := json.Marshal(h)
	if err != nil {
		return err
	}
	buf := make([]byte, savedHeaderSize)
	n := copy(buf, savedMagic)
	if n+len(js)+1 > len(buf) {
		return errors.New("saved-state header too long")
	}
	copy(buf[n:], append(js, '\n'))
	_, err = f.Write(buf)
	return err
}

// readSavedHeader reads the header of the saved-state file f and leaves f
// at the start of the migration stream.
func readSavedHeader(f *os.File) (savedHeader, error) {
	buf := make([]byte, savedHeaderSize)
	if _, err := io.ReadFull(f, buf); err != nil {
		return savedHeader{}, fmt.Errorf("saved state %s: header: %w", f.Name(), err)
	}
	if !bytes.HasPrefix(buf, []byte(savedMagic)) {
		return savedHeader{}, fmt.Errorf("saved state %s: not a vmfest saved-state file", f.Name())
	}
	line := buf[len(savedMagic):]
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	var h savedHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return savedHeader{}, fmt.Errorf("saved state %s: header: %w", f.Name(), err)
	}
	if h.State != Running && h.State != Paused {
		return savedHeader{}, fmt.Errorf("saved state %s: header: state %q: allowed: running, paused", f.Name(), h.State)
	}
	return h, nil
}

// maxBandwidth lifts QEMU's migration rate limit (32 MiB/s by default): a
// save goes to a local file with the guest stopped.
const maxBandwidth = 1 << 40

// Save implements driver.Saver: it stops the guest's CPUs, has QEMU write
// its migration stream into path (QMP getfd and migrate fd:), waits for
// query-migrate to report it complete and syncs the file. QEMU is then
// in run state postmigrate (Status: Saved) until PowerOff. On error the
// migration is cancelled, a guest that ran is continued and the file is
// removed.
func (d *Driver) Save(ctx context.Context, m driver.Machine, path string) (err error) {
	if _, alive, err := PID(m.Dir); err != nil {
		return err
	} else if !alive {
		return errors.New("save: QEMU is not running")
	}
	socket := Config{Dir: m.Dir}.Path(QMPSocket)
	st, err := QueryStatus(ctx, socket)
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	h := savedHeader{Saved: time.Now().UTC()}
	switch st.Status {
	case "running":
		h.State = Running
	case "paused":
		h.State = Paused
	default:
		return fmt.Errorf("save: QEMU is in run state %s, not running or paused", st.Status)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	stopped := false
	defer func() {
		if err == nil {
			return
		}
		f.Close()
		os.Remove(path)
		if stopped {
			// Continue the guest as it was, even if ctx is over.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultTimeout)
			defer cancel()
			if _, cerr := RunQMP(cctx, socket, "cont", nil); cerr != nil {
				err = fmt.Errorf("%w; and the guest could not be continued: %w", err, cerr)
			}
		}
	}()
	q, err := DialQMP(ctx, socket)
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	err = func() error {
		defer q.Close()
		pci, err := pciAddresses(ctx, q)
		if err != nil {
			return err
		}
		h.PCI = pci
		if err := writeSavedHeader(f, h); err != nil {
			return err
		}
		if h.State == Running {
			if _, err := q.Execute(ctx, "stop", nil); err != nil {
				return err
			}
			stopped = true
		}
		// A machine started from a memory template still has
		// x-ignore-shared on; its RAM is private, and its saved state
		// must hold all of it, so it no longer needs the template.
		return migrateTo(ctx, q, f, false)
	}()
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := waitMigrated(ctx, socket); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	return nil
}

// pciAddresses asks QEMU where each PCI device with an id is (query-pci),
// as QEMU's addr= takes it: "SLOT.FUNCTION" in hexadecimal.
func pciAddresses(ctx context.Context, q *QMP) (map[string]string, error) {
	raw, err := q.Execute(ctx, "query-pci", nil)
	if err != nil {
		return nil, err
	}
	var buses []struct {
		Bus     int `json:"bus"`
		Devices []struct {
			Bus      int    `json:"bus"`
			Slot     int    `json:"slot"`
			Function int    `json:"function"`
			ID       string `json:"qdev_id"`
		} `json:"devices"`
	}
	if err := json.Unmarshal(raw, &buses); err != nil {
		return nil, fmt.Errorf("query-pci: %w", err)
	}
	out := map[string]string{}
	for _, b := range buses {
		for _, d := range b.Devices {
			if d.ID == "" || d.Bus != 0 {
				continue
			}
			out[d.ID] = fmt.Sprintf("%02x.%x", d.Slot, d.Function)
		}
	}
	return out, nil
}

// migrateTo starts the migration of the stopped guest into f, with the
// capability x-ignore-shared as given (on: RAM mapped shared from a file
// is left out of the stream).
func migrateTo(ctx context.Context, q *QMP, f *os.File, ignoreShared bool) error {
	if err := setIgnoreShared(ctx, q, ignoreShared); err != nil {
		return err
	}
	if _, err := q.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": maxBandwidth}); err != nil {
		return err
	}
	if err := q.SendFD(ctx, saveFD, f); err != nil {
		return err
	}
	_, err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + saveFD})
	return err
}

// setIgnoreShared sets the migration capability x-ignore-shared.
func setIgnoreShared(ctx context.Context, q *QMP, on bool) error {
	_, err := q.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}},
	})
	return err
}

// waitMigrated polls query-migrate until the outgoing migration completes;
// a failed one is an error with QEMU's reason, and when ctx ends first the
// migration is cancelled (and waited for, briefly, so the caller's
// continue finds it over).
func waitMigrated(ctx context.Context, socket string) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var mi struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		raw, err := RunQMP(ctx, socket, "query-migrate", nil)
		if err == nil {
			err = json.Unmarshal(raw, &mi)
		}
		if err != nil && ctx.Err() == nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			RunQMP(cctx, socket, "migrate_cancel", nil)
			for cctx.Err() == nil {
				raw, err := RunQMP(cctx, socket, "query-migrate", nil)
				if err != nil || json.Unmarshal(raw, &mi) != nil || mi.Status != "cancelling" {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			return fmt.Errorf("migration cut short: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// openIncoming opens the saved-state file path for a resume: its header
// read, the file left at the start of the migration stream.
func openIncoming(path string) (*os.File, savedHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, savedHeader{}, fmt.Errorf("saved state: %w", err)
	}
	h, err := readSavedHeader(f)
	if err != nil {
		f.Close()
		return nil, savedHeader{}, err
	}
	return f, h, nil
}

// waitIncoming waits until the QEMU of dir, started with -incoming, has
// read its whole state back (run state no longer inmigrate). A QEMU that
// exits instead (a stream it cannot load) is an error with its log's end.
func waitIncoming(ctx context.Context, dir string) error {
	socket := Config{Dir: dir}.Path(QMPSocket)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, alive, err := PID(dir); err != nil {
			return err
		} else if !alive {
			msg, _ := os.ReadFile(Config{Dir: dir}.Path(LogFile))
			return fmt.Errorf("QEMU exited while loading the saved state: %s", lastLines(string(bytes.TrimSpace(msg)), 5))
		}
		st, err := QueryStatus(ctx, socket)
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("load the saved state: %w", err)
		}
		if err == nil && st.Status != "inmigrate" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("load the saved state: %w", ctx.Err())
		case <-tick.C:
		}
	}
}
