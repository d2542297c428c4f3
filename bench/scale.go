package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/spec"
)

// listAll reads every machine's Info, concurrently, as `vmfest list` does.
func listAll(ctx context.Context, l vmfest.Server) (int, error) {
	ms, err := l.Machines(ctx)
	if err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	errs := make([]error, len(ms))
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.Info(ctx)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return len(ms), nil
}

func listSequential(ctx context.Context, l vmfest.Server) error {
	ms, err := l.Machines(ctx)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if _, err := m.Info(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) scale(ctx context.Context) error {
	defined := b.reps(1000, 200)
	l, cleanup, err := b.server()
	if err != nil {
		return err
	}
	defer cleanup()
	img, _ := b.imageChoice(ctx, l)
	for i := 0; i < defined; i++ {
		if _, err := l.Instance(ctx, fmt.Sprintf("d%04d", i), img, natOnly(64)); err != nil {
			return err
		}
	}
	var api, cli []time.Duration
	bin, _ := filepath.Abs("build/vmfest")
	for i := 0; i < 7; i++ {
		t0 := time.Now()
		if n, err := listAll(ctx, l); err != nil || n != defined {
			return fmt.Errorf("list: %d machines, %v", n, err)
		}
		api = append(api, time.Since(t0))
		t0 = time.Now()
		cmd := exec.Command(bin, "--home", l.Home(), "list", "--json")
		cmd.Stdout = nil
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s list: %w (run make build)", bin, err)
		}
		cli = append(cli, time.Since(t0))
	}
	s := b.report.section("Scale")
	s.add(row{Metric: fmt.Sprintf("`Machines()` + `Info` of %d powered-off machines", defined), Value: ms(median(api)), Target: "≤ 100 ms", Met: met(median(api) <= 100*time.Millisecond)})
	s.add(row{Metric: fmt.Sprintf("`vmfest list --json` with %d machines (whole process)", defined), Value: ms(median(cli)), Target: "≤ 100 ms", Met: met(median(cli) <= 100*time.Millisecond)})

	// Running machines: state comes from QMP, one round-trip each; they
	// are queried concurrently.
	running := b.reps(20, 6)
	l2, cleanup2, err := b.server()
	if err != nil {
		return err
	}
	defer cleanup2()
	blank := filepath.Join(l2.Home(), "blank.raw")
	if err := os.WriteFile(blank, make([]byte, 1<<20), 0o444); err != nil {
		return err
	}
	for i := 0; i < running; i++ {
		m, err := l2.Instance(ctx, fmt.Sprintf("r%02d", i), vmfest.ImageSpec(spec.Image{Location: blank, Immutable: true}), natOnly(32))
		if err != nil {
			return err
		}
		if err := m.Start(ctx); err != nil {
			return err
		}
	}
	var conc, seq []time.Duration
	for i := 0; i < 7; i++ {
		t0 := time.Now()
		if _, err := listAll(ctx, l2); err != nil {
			return err
		}
		conc = append(conc, time.Since(t0))
		t0 = time.Now()
		if err := listSequential(ctx, l2); err != nil {
			return err
		}
		seq = append(seq, time.Since(t0))
	}
	s.add(row{Metric: fmt.Sprintf("state of %d running machines (concurrent QMP)", running), Value: ms(median(conc)), Baseline: ms(median(seq)) + " (one after another)", Ratio: ratio(median(conc), median(seq)), Target: "not linear in serial round-trips", Met: met(median(conc) < median(seq))})
	return nil
}
