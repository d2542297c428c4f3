package api

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/driver/fake"
)

// Clone through the API and the Remote, on the fake driver: a powered-off
// clone, a running one whose guest the fake cannot re-identify (the
// clone comes back with the error, as from a Local), and the refusals.
func TestFakeCloneThroughAPI(t *testing.T) {
	fk := fake.New(fake.Options{})
	e, r := fakeRemote(t, fk)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := r.Instance(ctx, "src", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.Clone(ctx, "off")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := c.State(ctx); err != nil || st != vmfest.PoweredOff || c.Name() != "off" {
		t.Fatalf("powered-off clone %s: %s, %v", c.Name(), st, err)
	}
	if _, err := m.Clone(ctx, "off"); !errors.Is(err, vmfest.ErrExists) {
		t.Fatalf("clone onto an existing name: %v", err)
	}
	if _, err := m.Clone(ctx, "bad/name"); !errors.Is(err, vmfest.ErrInvalid) {
		t.Fatalf("clone with a bad name: %v", err)
	}
	if _, err := (mustFind(t, ctx, r, "off")).Clone(ctx, "src"); !errors.Is(err, vmfest.ErrExists) {
		t.Fatalf("clone onto the source's name: %v", err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c, err = m.Clone(ctx, "live")
	if c == nil || !errors.Is(err, vmfest.ErrNotReidentified) {
		t.Fatalf("clone of a running machine on a guest without guest-exec: %v, %v", c, err)
	}
	info, err := c.Info(ctx)
	if err != nil || info.State != vmfest.Running || info.ReidentifyPending != "src" || info.GenerationID == "" {
		t.Fatalf("the clone: %+v, %v", info, err)
	}
	if st, _ := m.State(ctx); st != vmfest.Running {
		t.Fatalf("the source is %s after the clone", st)
	}
}

func mustFind(t *testing.T, ctx context.Context, r *vmfest.Remote, name string) vmfest.Machine {
	t.Helper()
	m, err := r.FindMachine(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
