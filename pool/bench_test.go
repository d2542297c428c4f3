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
	// Direct creates go round-robin to the three hosts, as the pool
	// spreads its own, so that both pay for hosts of the same size.
	var direct []*vmfest.Remote
	for _, h := range tp.hosts {
		r, err := vmfest.Connect(h.url, vmfest.WithToken(h.token))
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		direct = append(direct, r)
	}
	for _, name := range []string{"direct", "pool"} {
		n := 0 // b.Run calls the function again with a larger b.N
		b.Run(name, func(b *testing.B) {
			for range b.N {
				n++
				var srv vmfest.Server = tp.pool
				if name == "direct" {
					srv = direct[n%len(direct)]
				}
				if _, err := srv.Instance(ctx, fmt.Sprintf("%s-%d", name, n), vmfest.ImageSpec(tp.image), vmfest.HardwareSpec(natOnly)); err != nil {
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
