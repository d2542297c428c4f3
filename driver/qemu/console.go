package qemu

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest/store"
)

// The serial console is bounded end to end. QEMU writes it into an
// in-memory ring (a ringbuf chardev of ConsoleRingSize bytes, which keeps
// the newest bytes when the guest writes faster than anyone reads), and
// whichever vmfest process reads the console, waits for QEMU to exit or
// quits it drains the ring with QMP ringbuf-read into SerialLog. SerialLog
// is rotated to SerialLogOld when the next chunk would take it past
// ConsoleFileCap, so the console never holds more than ConsoleRingSize of
// memory and 2*ConsoleFileCap of disk, whatever the guest writes. No
// process besides QEMU runs per machine; what QEMU wrote since the last
// drain is lost if QEMU dies unexpectedly (killed, crashed).
const (
	// ConsoleRingSize is the size of QEMU's console ring (a power of two).
	ConsoleRingSize = 2 << 20
	// ConsoleFileCap is the most SerialLog grows before it is rotated.
	ConsoleFileCap = 2 << 20
	// SerialLogOld is the previous, full SerialLog.
	SerialLogOld = store.SerialLogOld
	// serialLock serialises drains and reads of the console files.
	serialLock = store.SerialLock
	// consoleChardev is the id of the console's ringbuf chardev.
	consoleChardev = "serial0"
	drainChunk     = 256 << 10
)

// DrainConsole moves what the guest wrote to its console since the last
// drain from QEMU's ring into the machine's console log. It does nothing
// when QEMU is not running.
func DrainConsole(ctx context.Context, dir string) error {
	unlock, err := lockConsole(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	return drainLocked(ctx, dir)
}

func drainLocked(ctx context.Context, dir string) error {
	if _, alive, err := PID(dir); err != nil || !alive {
		return err
	}
	c := Config{Dir: dir}
	q, err := DialQMP(ctx, c.Path(QMPSocket))
	if err != nil {
		if _, alive, _ := PID(dir); !alive {
			return nil // QEMU exited meanwhile: nothing left to drain
		}
		return fmt.Errorf("drain console: %w", err)
	}
	defer q.Close()
	for {
		raw, err := q.Execute(ctx, "ringbuf-read", map[string]any{"device": consoleChardev, "size": drainChunk, "format": "base64"})
		if err != nil {
			return fmt.Errorf("drain console: %w", err)
		}
		var b64 string
		if err := json.Unmarshal(raw, &b64); err != nil {
			return fmt.Errorf("drain console: ringbuf-read: %w", err)
		}
		data, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return fmt.Errorf("drain console: ringbuf-read: %w", err)
		}
		if len(data) == 0 {
			return nil
		}
		if err := appendConsole(c, data); err != nil {
			return err
		}
	}
}

// appendConsole appends data to SerialLog, rotating it first if it would
// grow past ConsoleFileCap. The caller holds the console lock.
func appendConsole(c Config, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), ConsoleFileCap)
		size := int64(0)
		if fi, err := os.Stat(c.Path(SerialLog)); err == nil {
			size = fi.Size()
		}
		if size+int64(n) > ConsoleFileCap && size > 0 {
			if err := os.Rename(c.Path(SerialLog), c.Path(SerialLogOld)); err != nil {
				return fmt.Errorf("rotate console log: %w", err)
			}
		}
		f, err := os.OpenFile(c.Path(SerialLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return fmt.Errorf("write console log: %w", err)
		}
		_, err = f.Write(data[:n])
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write console log: %w", err)
		}
		data = data[n:]
	}
	return nil
}

// ReadConsole drains the console ring of a running QEMU and returns the
// kept console output of the current or last run, oldest first: at most
// 2*ConsoleFileCap bytes.
func ReadConsole(ctx context.Context, dir string) ([]byte, error) {
	unlock, err := lockConsole(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	derr := drainLocked(ctx, dir)
	c := Config{Dir: dir}
	var out []byte
	for _, name := range []string{SerialLogOld, SerialLog} {
		data, err := os.ReadFile(c.Path(name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read console log: %w", err)
		}
		out = append(out, data...)
	}
	if derr != nil && len(out) == 0 {
		return nil, derr
	}
	return out, nil
}

// resetConsole removes the console log of an earlier run.
func resetConsole(ctx context.Context, dir string) error {
	unlock, err := lockConsole(ctx, dir)
	if err != nil {
		return err
	}
	defer unlock()
	c := Config{Dir: dir}
	for _, name := range []string{SerialLog, SerialLogOld} {
		if err := os.Remove(c.Path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove console log of the last run: %w", err)
		}
	}
	return nil
}

// lockConsole takes the machine's console lock (flock, so it excludes
// other processes and other callers in this one), waiting until ctx is done.
func lockConsole(ctx context.Context, dir string) (func(), error) {
	f, err := os.OpenFile(Config{Dir: dir}.Path(serialLock), os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock console log: %w", err)
	}
	if err := store.Flock(ctx, f, unix.LOCK_EX); err != nil {
		f.Close()
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, fmt.Errorf("lock console log: %w", timeoutErr("wait for another reader", err))
		}
		return nil, fmt.Errorf("lock console log: %w", err)
	}
	return func() { f.Close() }, nil
}
