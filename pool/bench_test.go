package pool_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/vmfest/vmfest"
)

// BenchmarkCreate: a create through the pool (read the pool, place,
// reserve and settle in etcd, create on the host) beside the same create
// sent directly to one host's API, on the fake driver so that the cost
// measured is the pool's. The ratio of the two is the price of placement
// and the etcd transactions.
func BenchmarkCreate(b *testing.B) {
	tp := newTestPool(b)
	ctx := context.Background()
	direct, err := vmfest.Connect(tp.hosts[0].url, vmfest.WithToken(tp.hosts[0].token))
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	for _, bc := range []struct {
		name string
		srv  vmfest.Server
	}{{"direct", direct}, {"pool", tp.pool}} {
		n := 0 // b.Run calls the function again with a larger b.N
		b.Run(bc.name, func(b *testing.B) {
			for range b.N {
				n++
				if _, err := bc.srv.Instance(ctx, fmt.Sprintf("%s-%d", bc.name, n), vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("list", func(b *testing.B) {
		ms, err := tp.pool.Machines(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(len(ms)), "machines")
		for range b.N {
			if _, err := tp.pool.Machines(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
