package store

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"vm1", true}, {"a", true}, {"Web-01.prod_2", true}, {strings.Repeat("a", 63), true},
		{"", false}, {strings.Repeat("a", 64), false}, {"-vm", false}, {".hidden", false},
		{"a/b", false}, {"..", false}, {"a\x00b", false}, {"a b", false}, {"é", false},
	}
	for _, tt := range tests {
		err := ValidateName("machine", tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("error does not wrap ErrInvalidName: %v", err)
		}
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f.json")
	for _, content := range []string{"one", "two"} {
		if err := WriteFileAtomic(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if string(got) != content {
			t.Fatalf("content = %q", got)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v", st.Mode())
	}
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "f"), nil, 0o644); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

func TestLockDirSerialises(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	inside, maxInside := 0, 0
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lk, err := LockDir(context.Background(), dir)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			inside++
			maxInside = max(maxInside, inside)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			lk.Unlock()
			lk.Unlock() // safe to repeat
		}()
	}
	wg.Wait()
	if maxInside != 1 {
		t.Fatalf("%d holders at once", maxInside)
	}
}

func TestLockDirTimeoutAndRemoval(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "m")
	os.Mkdir(dir, 0o755)
	held, err := LockDir(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := LockDir(ctx, dir); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	// A waiter whose directory is removed meanwhile is told it is gone.
	done := make(chan error, 1)
	go func() {
		_, err := LockDir(context.Background(), dir)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	os.Rename(dir, dir+".gone")
	held.Unlock()
	if err := <-done; !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want not-exist", err)
	}
	if _, err := LockDir(context.Background(), dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v", err)
	}
}

// TestFlockAbandonedWait: a wait that ends with its context neither keeps
// the lock once the holder lets go nor delays the next waiter, and a
// waiter gets a lock as soon as it is released.
func TestFlockAbandonedWait(t *testing.T) {
	dir := t.TempDir()
	held, err := LockDir(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := LockDir(ctx, dir)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the deadline", err)
		}
	}
	held.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		lk, ok, err := TryLockDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			lk.Unlock()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the lock is still held 5 s after its holder let go: an abandoned wait kept it")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// A blocked waiter gets the lock the moment it is let go.
	held, err = LockDir(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Time, 1)
	go func() {
		lk, err := LockDir(context.Background(), dir)
		if err != nil {
			t.Error(err)
		}
		got <- time.Now()
		lk.Unlock()
	}()
	time.Sleep(200 * time.Millisecond) // long past any polling backoff
	released := time.Now()
	held.Unlock()
	select {
	case at := <-got:
		if d := at.Sub(released); d > 40*time.Millisecond {
			t.Logf("waiter got the lock %v after its release (a loaded machine?)", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter did not get the lock within 5 s of its release")
	}
}

func TestOpen(t *testing.T) {
	root := filepath.Join(t.TempDir(), "home")
	h, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{h.MachinesPath(), h.ImageModelsPath(), h.HardwareModelsPath()} {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			t.Fatalf("%s: %v", d, err)
		}
	}
	if h.MachinePath("vm") != filepath.Join(root, "machines", "vm") {
		t.Fatal(h.MachinePath("vm"))
	}
	if _, err := Open(""); err == nil {
		t.Fatal("Open with no path succeeded")
	}
}
