package api

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vmfest/vmfest/api/wire"
)

// TestOperationsBounded: at most maxRunning operations run at once; the
// next is refused with 503 until one ends.
func TestOperationsBounded(t *testing.T) {
	ops := newOperations(time.Minute, newBroker(), newMetrics())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	block := func(ctx context.Context, _ func(wire.Progress)) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	var first wire.Operation
	for i := range maxRunning {
		op, err := ops.start(ctx, wire.OpWaitReady, "m", time.Hour, block)
		if err != nil {
			t.Fatalf("operation %d: %v", i, err)
		}
		if i == 0 {
			first = op
		}
	}
	_, err := ops.start(ctx, wire.OpWaitReady, "m", time.Hour, block)
	var he *httpError
	if !errors.As(err, &he) || he.status != 503 {
		t.Fatalf("operation %d: %v, want 503", maxRunning+1, err)
	}
	o, ok := ops.get(first.ID)
	if !ok {
		t.Fatal("first operation not found")
	}
	o.cancel()
	<-o.done
	if got := o.snapshot(); got.Status != wire.Canceled || got.Error == nil || got.Error.Code != wire.CodeCanceled {
		t.Fatalf("canceled operation: %+v", got)
	}
	if _, err := ops.start(ctx, wire.OpWaitReady, "m", time.Hour, block); err != nil {
		t.Fatalf("after one ended: %v", err)
	}
}
