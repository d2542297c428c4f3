package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api"
)

// api measures the HTTP API through `vmfest serve`'s server on a Unix
// socket, beside the same work done on the Local server in-process.
func (b *bench) api(ctx context.Context) error {
	l, cleanup, err := b.server()
	if err != nil {
		return err
	}
	defer cleanup()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	srv, err := api.New(sctx, l, api.Config{Logger: b.log})
	if err != nil {
		return err
	}
	sock := filepath.Join(l.Home(), api.SocketFile)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, api.Listen{Unix: sock}) }()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 500 {
			return fmt.Errorf("the API server did not listen on %s", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
	remote, err := vmfest.Connect("unix://" + sock)
	if err != nil {
		return err
	}
	img, _ := b.imageChoice(ctx, l)
	hw := natOnly(64)

	// Creates and destroys per second, remote beside local.
	n := b.reps(200, 40)
	rate := func(s vmfest.Server, prefix string) (float64, error) {
		t0 := time.Now()
		for i := 0; i < n; i++ {
			m, err := s.Instance(ctx, fmt.Sprintf("%s%d", prefix, i), img, hw)
			if err != nil {
				return 0, err
			}
			if err := m.Destroy(ctx); err != nil {
				return 0, err
			}
		}
		return float64(2*n) / time.Since(t0).Seconds(), nil
	}
	local, err := rate(l, "l")
	if err != nil {
		return err
	}
	viaAPI, err := rate(remote, "r")
	if err != nil {
		return err
	}

	// GET /v1/machines with many machines.
	defined := b.reps(1000, 200)
	for i := 0; i < defined; i++ {
		if _, err := l.Instance(ctx, fmt.Sprintf("d%04d", i), img, hw); err != nil {
			return err
		}
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	var gets, locals []time.Duration
	reqs := b.reps(50, 10)
	for i := 0; i < reqs; i++ {
		t0 := time.Now()
		resp, err := hc.Get("http://vmfest/v1/machines")
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v1/machines: %s", resp.Status)
		}
		gets = append(gets, time.Since(t0))
		t0 = time.Now()
		if _, err := listAll(ctx, l); err != nil {
			return err
		}
		locals = append(locals, time.Since(t0))
	}
	s := b.report.section("API (`vmfest serve` on a Unix socket)")
	s.add(row{Metric: "machines created + destroyed per second", Value: fmt.Sprintf("%.0f /s", viaAPI), Baseline: fmt.Sprintf("%.0f /s (Local, in-process)", local), Ratio: fmt.Sprintf("%.2f×", viaAPI/local)})
	s.add(row{Metric: fmt.Sprintf("`GET /v1/machines`, %d machines, p50", defined), Value: ms(percentile(gets, 0.5)), Baseline: ms(median(locals)) + " (Local `Machines` + `Info`)", Ratio: ratio(percentile(gets, 0.5), median(locals))})
	s.add(row{Metric: fmt.Sprintf("`GET /v1/machines`, %d machines, p99 of %d", defined, reqs), Value: ms(percentile(gets, 0.99))})
	stop()
	<-served
	return nil
}
