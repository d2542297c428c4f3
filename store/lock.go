package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Lock is a held exclusive lock on one object's directory. Locks are
// flock(2) locks on the directory itself, so they serialise operations across
// goroutines (each Lock opens its own file description) and across processes,
// are released by the kernel if the holder dies, and leave no lock files
// behind. A directory renamed or removed while a waiter holds it open hands
// the waiter a lock on a dead directory: callers re-check that the object
// still exists after locking (see LockDir's doc).
type Lock struct {
	f *os.File
}

// LockDir takes the exclusive lock of the directory at path, waiting until
// it is free or ctx is done. It fails with an error wrapping fs.ErrNotExist
// when the directory does not exist, including when it was removed while
// this call waited.
func LockDir(ctx context.Context, path string) (*Lock, error) {
	return lockDir(ctx, path, unix.LOCK_EX)
}

// LockDirShared takes a shared lock on the directory at path: any number of
// shared holders, or one exclusive holder, at a time.
func LockDirShared(ctx context.Context, path string) (*Lock, error) {
	return lockDir(ctx, path, unix.LOCK_SH)
}

func lockDir(ctx context.Context, path string, how int) (*Lock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := Flock(ctx, f, how); err != nil {
		f.Close()
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, fmt.Errorf("lock %s: another operation holds it: %w", path, err)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// The directory may have been removed or replaced while we waited.
	var held, now unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &held); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Stat(path, &now); err != nil || now.Ino != held.Ino || now.Dev != held.Dev {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, fs.ErrNotExist)
	}
	return &Lock{f: f}, nil
}

// Flock takes the flock(2) lock how (unix.LOCK_EX or unix.LOCK_SH) on f,
// polling with a backoff of up to 50 ms until it is free, and returns
// ctx's error if ctx ends first. It is the one wait for a file lock that
// every package shares (directories here, the download cache, the console).
func Flock(ctx context.Context, f *os.File, how int) error {
	delay := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// Unlock releases the lock. It is safe to call more than once.
func (l *Lock) Unlock() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Close() // closing the description releases the flock
	l.f = nil
}

// TryLockDir takes the directory's lock if it is free right now. It returns
// ok=false, without error, when another holder has it.
func TryLockDir(path string) (lk *Lock, ok bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	return &Lock{f: f}, true, nil
}
