package api

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/vmfest/vmfest"
)

// The HTTP layer's cost, side by side with the same work on the Local
// server it serves (machines on a blank image, powered off):
//
//	go test -run XXX -bench . -benchtime 2s ./api/

// BenchmarkListMachines lists N machines with their info: GET /v1/machines
// over the Unix socket, against Local.Machines plus Info for each.
func BenchmarkListMachines(b *testing.B) {
	for _, n := range []int{10, 100} {
		e := newEnv(b)
		_, sock := serveUnix(b, e)
		ctx := context.Background()
		for i := range n {
			if _, err := e.local.Instance(ctx, fmt.Sprintf("m%03d", i), vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly)); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("local/n=%d", n), func(b *testing.B) {
			for b.Loop() {
				ms, err := e.local.Machines(ctx)
				if err != nil {
					b.Fatal(err)
				}
				for _, m := range ms {
					if _, err := m.Info(ctx); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
		b.Run(fmt.Sprintf("http/n=%d", n), func(b *testing.B) {
			for b.Loop() {
				resp, err := hc.Get("http://vmfest/v1/machines")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatal(resp.Status)
				}
			}
		})
	}
}

// BenchmarkCreateDestroy creates and destroys a machine: through a Remote
// on the Unix socket, against Local.
func BenchmarkCreateDestroy(b *testing.B) {
	e := newEnv(b)
	r, _ := serveUnix(b, e)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		srv  vmfest.Server
	}{{"local", e.local}, {"remote", r}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				m, err := tc.srv.Instance(ctx, "bench", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
				if err != nil {
					b.Fatal(err)
				}
				if err := m.Destroy(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCreateDestroyParallel is BenchmarkCreateDestroy with
// GOMAXPROCS×4 callers at once, each on its own machine names.
func BenchmarkCreateDestroyParallel(b *testing.B) {
	e := newEnv(b)
	r, _ := serveUnix(b, e)
	ctx := context.Background()
	var seq atomic.Int64
	for _, tc := range []struct {
		name string
		srv  vmfest.Server
	}{{"local", e.local}, {"remote", r}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					name := fmt.Sprintf("p%d", seq.Add(1))
					m, err := tc.srv.Instance(ctx, name, vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
					if err != nil {
						b.Error(err)
						return
					}
					if err := m.Destroy(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
