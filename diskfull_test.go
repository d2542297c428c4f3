package vmfest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestDiskFull fills a small tmpfs used as the state directory: the create
// that runs out of space fails with a clear error and leaves nothing
// partial; the machines made before stay whole.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	home, err := os.MkdirTemp("", "vmff")
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", home, "tmpfs", 0, "size=1200k"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() {
		syscall.Unmount(home, syscall.MNT_DETACH)
		os.RemoveAll(home)
	})
	l, err := NewLocal(Config{Home: home, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	img := blankImage(t, t.TempDir())
	ctx := context.Background()
	made := 0
	var full error
	for i := 0; i < 50; i++ {
		_, err := l.Instance(ctx, fmt.Sprintf("m%d", i), ImageSpec(img), natOnly())
		if err != nil {
			full = err
			break
		}
		made++
	}
	if full == nil {
		t.Fatal("the state directory never filled up")
	}
	if !errors.Is(full, syscall.ENOSPC) || !strings.Contains(full.Error(), "no space left on device") || !strings.Contains(full.Error(), fmt.Sprintf("create machine m%d", made)) {
		t.Fatalf("err = %v", full)
	}
	t.Logf("%d machines fitted; then: %v", made, full)
	checkWhole(t, l, 0)
	ms, _ := l.Machines(ctx)
	if len(ms) != made {
		t.Fatalf("%d machines listed, %d made", len(ms), made)
	}
}
