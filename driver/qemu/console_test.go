package qemu

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// feedConsole writes lines into the console ring through QMP, as a guest
// writing to its serial port would, starting at line number from.
func feedConsole(ctx context.Context, t *testing.T, cfg Config, from, lines int) {
	t.Helper()
	var b strings.Builder
	for i := from; i < from+lines; i++ {
		fmt.Fprintf(&b, "vmfest-line %08d %s\n", i, strings.Repeat("x", 80))
		if b.Len() > 4<<10 || i == from+lines-1 {
			args := map[string]any{"device": consoleChardev, "data": base64.StdEncoding.EncodeToString([]byte(b.String())), "format": "base64"}
			if _, err := RunQMP(ctx, cfg.Path(QMPSocket), "ringbuf-write", args); err != nil {
				t.Fatal(err)
			}
			b.Reset()
		}
	}
}

var lineRE = regexp.MustCompile(`(?m)^vmfest-line (\d{8}) x+$`)

// keptLines returns the numbers of the whole test lines in out.
func keptLines(out []byte) []int {
	var nums []int
	for _, m := range lineRE.FindAllSubmatch(out, -1) {
		n, _ := strconv.Atoi(string(m[1]))
		nums = append(nums, n)
	}
	return nums
}

func diskUse(t *testing.T, cfg Config) int64 {
	t.Helper()
	var total int64
	for _, name := range []string{SerialLog, SerialLogOld} {
		fi, err := os.Stat(cfg.Path(name))
		if err != nil {
			continue
		}
		if fi.Size() > ConsoleFileCap {
			t.Errorf("%s is %d bytes, over the cap of %d", name, fi.Size(), ConsoleFileCap)
		}
		total += fi.Size()
	}
	return total
}

// TestAppendConsoleBounded: however much the guest writes and in whatever
// chunks the ring is drained, the console files stay under their caps and
// keep the newest lines, contiguous.
func TestAppendConsoleBounded(t *testing.T) {
	tests := []struct {
		name  string
		chunk int // bytes per drain
	}{
		{"small drains", 4 << 10},
		{"drain-sized chunks", drainChunk},
		{"chunk over the cap", ConsoleFileCap + ConsoleFileCap/2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Dir: t.TempDir()}
			var all []byte
			last := 0
			for ; len(all) < 5*ConsoleFileCap; last++ {
				all = fmt.Appendf(all, "vmfest-line %08d %s\n", last, strings.Repeat("x", 80))
			}
			last--
			for rest := all; len(rest) > 0; {
				n := min(tt.chunk, len(rest))
				if err := appendConsole(cfg, rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
				if use := diskUse(t, cfg); use > 2*ConsoleFileCap {
					t.Fatalf("console uses %d bytes of disk, over %d", use, 2*ConsoleFileCap)
				}
			}
			out, err := ReadConsole(context.Background(), cfg.Dir)
			if err != nil {
				t.Fatal(err)
			}
			nums := keptLines(out)
			if len(nums) == 0 || nums[len(nums)-1] != last {
				t.Fatalf("newest kept line is not the last written (%d); kept %d lines", last, len(nums))
			}
			for i := 1; i < len(nums); i++ {
				if nums[i] != nums[i-1]+1 {
					t.Fatalf("kept lines jump from %d to %d", nums[i-1], nums[i])
				}
			}
			if len(out) < ConsoleFileCap {
				t.Errorf("only %d bytes kept; want at least a full file (%d)", len(out), ConsoleFileCap)
			}
		})
	}
}

// startRing starts a bare QEMU (no machine) whose console is a ring of
// size bytes, with the pidfile and QMP socket vmfest expects.
func startRing(t *testing.T, size int) Config {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 is needed: apt-get install qemu-system-x86")
	}
	dir, err := os.MkdirTemp("", "vmr")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Dir: dir}
	t.Cleanup(func() {
		Kill(dir)
		WaitExit(context.Background(), dir)
		os.RemoveAll(dir)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
		"-chardev", fmt.Sprintf("ringbuf,id=%s,size=%d", consoleChardev, size),
		"-qmp", "unix:"+cfg.Path(QMPSocket)+",server=on,wait=off",
		"-pidfile", cfg.Path(PIDFile), "-daemonize").CombinedOutput()
	if err != nil {
		t.Fatalf("start QEMU: %v: %s", err, out)
	}
	return cfg
}

// TestConsoleRingOverflow: a guest writing far more than the ring holds
// between drains loses the oldest bytes, never the newest, and QEMU's
// memory for it stays the ring's size.
func TestConsoleRingOverflow(t *testing.T) {
	const ring = 64 << 10
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := startRing(t, ring)
	feedConsole(ctx, t, cfg, 0, 4*ring/102)
	out, err := ReadConsole(ctx, cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) > ring {
		t.Errorf("drained %d bytes from a ring of %d", len(out), ring)
	}
	nums := keptLines(out)
	if len(nums) == 0 || nums[len(nums)-1] != 4*ring/102-1 {
		t.Fatalf("newest line lost: kept %v…", nums[:min(len(nums), 3)])
	}
	// Drained in time, nothing is lost.
	next := 4 * ring / 101
	for i := range 3 {
		feedConsole(ctx, t, cfg, next+i*100, 100)
		if err := DrainConsole(ctx, cfg.Dir); err != nil {
			t.Fatal(err)
		}
	}
	out, err = ReadConsole(ctx, cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	nums = keptLines(out)
	if got := nums[len(nums)-300:]; got[0] != next || got[299] != next+299 {
		t.Fatalf("drained lines %d..%d, want %d..%d", got[0], got[299], next, next+299)
	}
}

// TestConsoleFollow: a reader polling ReadConsole, as console --follow
// does, sees each line soon after it is written, from another process's
// point of view too (the files are all it shares).
func TestConsoleFollow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := startBlank(t)
	for i := range 5 {
		feedConsole(ctx, t, cfg, i, 1)
		want := fmt.Sprintf("vmfest-line %08d", i)
		deadline := time.Now().Add(5 * time.Second)
		for {
			out, err := ReadConsole(ctx, cfg.Dir)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(out, []byte(want)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("line %d not seen within 5s; console: %q", i, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// A new run starts with an empty console.
	if _, err := RunQMP(ctx, cfg.Path(QMPSocket), "quit", nil); err != nil {
		t.Fatal(err)
	}
	if err := WaitExit(ctx, cfg.Dir); err != nil {
		t.Fatal(err)
	}
	if err := Start(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	out, err := ReadConsole(ctx, cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("vmfest-line")) {
		t.Fatalf("a new run shows the last run's console: %q", out)
	}
}

// TestConcurrentQMP: many callers query and change one machine's state at
// once (QEMU serves one QMP client at a time); none fails or sees a state
// it did not cause.
func TestConcurrentQMP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := startBlank(t)
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				switch (g + i) % 4 {
				case 0:
					st, err := Inspect(ctx, cfg.Dir)
					if err != nil {
						errs <- fmt.Errorf("goroutine %d: inspect: %w", g, err)
					} else if st != Running && st != Paused {
						errs <- fmt.Errorf("goroutine %d: state %q", g, st)
					}
				case 1:
					if _, err := RunQMP(ctx, cfg.Path(QMPSocket), "stop", nil); err != nil {
						errs <- fmt.Errorf("goroutine %d: stop: %w", g, err)
					}
				case 2:
					if _, err := RunQMP(ctx, cfg.Path(QMPSocket), "cont", nil); err != nil {
						errs <- fmt.Errorf("goroutine %d: cont: %w", g, err)
					}
				case 3:
					if _, err := ReadConsole(ctx, cfg.Dir); err != nil {
						errs <- fmt.Errorf("goroutine %d: console: %w", g, err)
					}
				}
			}
		}()
	}
	// A second process queries the same machine meanwhile.
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperInspect$", "-test.count=1")
	cmd.Env = append(os.Environ(), "VMFEST_HELPER_DIR="+cfg.Dir)
	out, err := cmd.CombinedOutput()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err != nil {
		t.Errorf("second process: %v: %s", err, out)
	}
}

// TestHelperInspect is the second process of TestConcurrentQMP.
func TestHelperInspect(t *testing.T) {
	dir := os.Getenv("VMFEST_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process of TestConcurrentQMP")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 40 {
		st, err := Inspect(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		if st != Running && st != Paused {
			t.Fatalf("state %q", st)
		}
	}
}
