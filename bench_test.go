package vmfest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// Benchmarks of the hot paths. BenchmarkQemuImgOverlay is the baseline for
// BenchmarkInstance: `go test -bench . -run '^$'` prints both.

func benchServer(b *testing.B) (*Local, Image) {
	b.Helper()
	home, err := os.MkdirTemp("", "vmfbb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(home) })
	l, err := NewLocal(Config{Home: home})
	if err != nil {
		b.Fatal(err)
	}
	base := filepath.Join(home, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "10G").CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	os.Chmod(base, 0o444)
	return l, ImageSpec(specImage(base))
}

func BenchmarkInstance(b *testing.B) {
	l, img := benchServer(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := l.Instance(ctx, fmt.Sprintf("vm%d", i), img, natOnly()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInstanceParallel(b *testing.B) {
	l, img := benchServer(b)
	ctx := context.Background()
	var n atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := l.Instance(ctx, fmt.Sprintf("vm%d", n.Add(1)), img, natOnly()); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkQemuImgOverlay(b *testing.B) {
	l, img := benchServer(b)
	dir := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out := filepath.Join(dir, fmt.Sprintf("o%d.qcow2", i))
		if err := l.qemuImgOverlay(context.Background(), img.Spec.Location, "qcow2", out); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteOverlay(b *testing.B) {
	_, img := benchServer(b)
	dir := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := writeOverlay(filepath.Join(dir, fmt.Sprintf("o%d.qcow2", i)), img.Spec.Location, "qcow2", 10<<30); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkList1000(b *testing.B) {
	l, img := benchServer(b)
	ctx := context.Background()
	for i := 0; i < 1000; i++ {
		if _, err := l.Instance(ctx, fmt.Sprintf("vm%04d", i), img, natOnly()); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ms, err := l.Machines(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for _, m := range ms {
			if _, err := m.Info(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
}
