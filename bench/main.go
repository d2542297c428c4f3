// Command bench measures vmfest against its baselines, side by side in one
// run, and writes docs/BENCHMARKS.md and its plot:
//
//	go run ./bench -image build/vmfest-tiny.meta -out docs/BENCHMARKS.md
//
// Each figure is a median over repeated runs; each ratio compares vmfest with
// the baseline measured in the same run (raw qemu-img, raw QEMU).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/internal/netnstest"
	"github.com/vmfest/vmfest/spec"
)

type bench struct {
	image  spec.Image
	quick  bool
	report *report
	log    *slog.Logger
}

func main() {
	// As root the bench runs in network and PID namespaces of its own, as
	// the tests do: the micro machines' host-only bridge, taps and
	// dnsmasq, and every packet to a guest's address, stay in them.
	if code, done := netnstest.Wrap(); done {
		os.Exit(code)
	}
	imagePath := flag.String("image", "build/vmfest-tiny.meta", "image spec of the tiny guest")
	out := flag.String("out", "", "write the report (markdown) here; its plot goes beside it as bench.png")
	quick := flag.Bool("quick", false, "fewer repetitions (a smoke run, not for the record)")
	only := flag.String("only", "", "run only the step of this name (a check, not for the record)")
	flag.Parse()

	data, err := os.ReadFile(*imagePath)
	if err != nil {
		log.Fatalf("read %s (run make image): %v", *imagePath, err)
	}
	im, err := spec.ParseImage(data)
	if err != nil {
		log.Fatal(err)
	}
	if !filepath.IsAbs(im.Location) {
		im.Location, _ = filepath.Abs(filepath.Join(filepath.Dir(*imagePath), im.Location))
	}
	b := &bench{image: im, quick: *quick, report: newReport(), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx := context.Background()
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"instantiate", b.instantiate},
		{"scale", b.scale},
		{"start to ready", b.startToReady},
		{"footprint", b.footprint},
		{"clone memory", b.cloneMemory},
		{"api", b.api},
		{"pool", b.poolBench},
	}
	for _, s := range steps {
		if *only != "" && s.name != *only {
			continue
		}
		fmt.Fprintf(os.Stderr, "bench: %s...\n", s.name)
		begun := time.Now()
		if err := s.fn(ctx); err != nil {
			log.Fatalf("%s: %v", s.name, err)
		}
		fmt.Fprintf(os.Stderr, "bench: %s done in %s\n", s.name, time.Since(begun).Round(time.Millisecond))
	}
	md := b.report.markdown(strings.Join(append([]string{"go run ./bench"}, os.Args[1:]...), " "))
	if *out == "" {
		fmt.Print(md)
		return
	}
	png := filepath.Join(filepath.Dir(*out), "bench.png")
	if err := b.report.plot(png); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s and %s\n", *out, png)
}

// server returns a Local server over a fresh state directory, removed (with
// every QEMU it ran killed) by the returned cleanup.
func (b *bench) server() (*vmfest.Local, func(), error) {
	home, err := os.MkdirTemp("", "vmfb")
	if err != nil {
		return nil, nil, err
	}
	l, err := vmfest.NewLocal(vmfest.Config{Home: home, Logger: b.log})
	if err != nil {
		os.RemoveAll(home)
		return nil, nil, err
	}
	cleanup := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		ms, _ := l.Machines(ctx)
		for _, m := range ms {
			if st, _ := m.State(ctx); st != vmfest.PoweredOff {
				m.PowerDown(ctx)
			}
		}
		os.RemoveAll(home)
	}
	return l, cleanup, nil
}

// natOnly is the micro size with one NAT NIC: no host networking needed.
func natOnly(mem int) vmfest.Hardware {
	return vmfest.HardwareSpec(spec.Hardware{MemorySize: mem, CPUCount: 1, Network: []spec.NIC{{AttachmentType: spec.AttachNAT}}})
}

func (b *bench) reps(full, quick int) int {
	if b.quick {
		return quick
	}
	return full
}
