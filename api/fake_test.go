package api

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/driver"
	"github.com/vmfest/vmfest/driver/fake"
	"github.com/vmfest/vmfest/spec"
	"github.com/vmfest/vmfest/store"
)

// The API's lifecycle and error paths against the in-memory fake driver:
// no QEMU, run with -short too.

func withDriver(d driver.Driver) envOption {
	return func(l *vmfest.Config, _ *Config) { l.Driver = d }
}

// fakeRemote is a Remote client of an env whose machines run on fk.
func fakeRemote(t *testing.T, fk *fake.Driver) (*env, *vmfest.Remote) {
	t.Helper()
	e := newEnv(t, withDriver(fk))
	r, err := vmfest.Connect(e.http.URL, vmfest.WithToken(e.token))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return e, r
}

func TestFakeLifecycleThroughAPI(t *testing.T) {
	fk := fake.New(fake.Options{ShutdownDelay: 10 * time.Millisecond})
	e, r := fakeRemote(t, fk)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := r.Instance(ctx, "f1", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		op   func(context.Context) error
		want vmfest.State
	}{
		{"start", m.Start, vmfest.Running},
		{"wait", m.WaitReady, vmfest.Running},
		{"pause", m.Pause, vmfest.Paused},
		{"resume", m.Resume, vmfest.Running},
		{"stop", m.Stop, vmfest.PoweredOff},
		{"start again", m.Start, vmfest.Running},
		{"power-down", m.PowerDown, vmfest.PoweredOff},
	}
	for _, s := range steps {
		if err := s.op(ctx); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if st, err := m.State(ctx); err != nil || st != s.want {
			t.Fatalf("after %s: state %s, %v; want %s", s.name, st, err, s.want)
		}
	}
	info, err := m.Info(ctx)
	if err != nil || info.Driver != "fake" {
		t.Fatalf("info = %+v, %v", info, err)
	}
	if err := m.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.FindMachine(ctx, "f1"); !errors.Is(err, vmfest.ErrNotFound) {
		t.Fatalf("find after destroy: %v", err)
	}
}

// TestFakeErrorsThroughAPI: what the driver refuses or fails reaches a
// Remote caller as the same error a Local caller gets, with its status.
func TestFakeErrorsThroughAPI(t *testing.T) {
	hostOnly := spec.Hardware{MemorySize: 128, Network: []spec.NIC{{AttachmentType: spec.AttachHostOnly}}}
	for _, c := range []struct {
		name   string
		hw     spec.Hardware
		fail   func(fk *fake.Driver)
		status int
		target error
		says   string
	}{
		{"memory", *natOnly, func(fk *fake.Driver) { fk.Fail("Start", errors.New("cannot set up guest memory 'pc.ram'")) },
			http.StatusServiceUnavailable, vmfest.ErrUnavailable, "memory-size"},
		{"unsupported", hostOnly, nil,
			http.StatusNotImplemented, errors.ErrUnsupported, "cannot put a NIC on a host tap"},
		{"internal", *natOnly, func(fk *fake.Driver) { fk.Fail("Start", errors.New("boom")) },
			http.StatusInternalServerError, nil, "fake Start: boom"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fk := fake.New(fake.Options{})
			e, r := fakeRemote(t, fk)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			m, err := r.Instance(ctx, "e1", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(c.hw))
			if err != nil {
				t.Fatal(err)
			}
			if c.fail != nil {
				c.fail(fk)
			}
			code, body := e.do(t, http.MethodPost, "/v1/machines/e1/start", nil)
			if code != c.status || !strings.Contains(string(body), c.says) {
				t.Fatalf("start: %d %s; want %d saying %q", code, body, c.status, c.says)
			}
			if c.fail != nil {
				c.fail(fk) // again, for the Remote call
			}
			err = m.Start(ctx)
			if err == nil || (c.target != nil && !errors.Is(err, c.target)) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("Remote start: %v; want %v saying %q", err, c.target, c.says)
			}
			if st, err := m.State(ctx); err != nil || st != vmfest.PoweredOff {
				t.Fatalf("state after a failed start: %s, %v", st, err)
			}
		})
	}
}

// TestFakeCrashThroughAPI: a crashed machine reads aborted through the API
// and starts again.
func TestFakeCrashThroughAPI(t *testing.T) {
	fk := fake.New(fake.Options{})
	e, r := fakeRemote(t, fk)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := r.Instance(ctx, "c1", vmfest.ImageSpec(e.blank), vmfest.HardwareSpec(*natOnly))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	fk.Crash(filepath.Join(e.home, store.MachinesDir, "c1"))
	if st, err := m.State(ctx); err != nil || st != vmfest.Aborted {
		t.Fatalf("state after a crash: %s, %v", st, err)
	}
	var se *vmfest.StateError
	if err := m.Pause(ctx); !errors.As(err, &se) || se.State != vmfest.Aborted {
		t.Fatalf("pause of an aborted machine: %v", err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := m.State(ctx); err != nil || st != vmfest.Running {
		t.Fatalf("state after restart: %s, %v", st, err)
	}
}
