package vmfest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/vmfest/vmfest/api/wire"
)

// remoteMachine is a handle on a machine of a Remote server: its name
// only, like Local's.
type remoteMachine struct {
	r    *Remote
	name string
}

func (m *remoteMachine) Name() string { return m.name }

func (m *remoteMachine) path(suffix string) string {
	return wire.Prefix + "/machines/" + m.name + suffix
}

func (m *remoteMachine) action(ctx context.Context, action string) error {
	return m.r.call(ctx, http.MethodPost, m.path("/"+action), nil, nil)
}

// Start implements Machine.
func (m *remoteMachine) Start(ctx context.Context) error { return m.action(ctx, "start") }

// Save implements Machine.
func (m *remoteMachine) Save(ctx context.Context) error { return m.action(ctx, "save") }

// Pause implements Machine.
func (m *remoteMachine) Pause(ctx context.Context) error { return m.action(ctx, "pause") }

// Resume implements Machine.
func (m *remoteMachine) Resume(ctx context.Context) error { return m.action(ctx, "resume") }

// PowerDown implements Machine.
func (m *remoteMachine) PowerDown(ctx context.Context) error { return m.action(ctx, "power-down") }

// Stop implements Machine: an operation on the server, bounded by ctx's
// deadline (DefaultStopTimeout when it has none).
func (m *remoteMachine) Stop(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultStopTimeout)
		defer cancel()
	}
	_, err := m.r.operation(ctx, m.path("/stop?timeout="+remaining(ctx, DefaultStopTimeout)), nil, nil)
	return err
}

// WaitReady implements Machine: an operation on the server, bounded by ctx.
func (m *remoteMachine) WaitReady(ctx context.Context) error {
	_, err := m.r.operation(ctx, m.path("/wait-ready?timeout="+remaining(ctx, time.Hour)), nil, nil)
	return err
}

// Destroy implements Machine.
func (m *remoteMachine) Destroy(ctx context.Context, opts ...DestroyOption) error {
	path := m.path("")
	if destroyOpts(opts).keepDisk {
		path += "?keep-disk=true"
	}
	return m.r.call(ctx, http.MethodDelete, path, nil, nil)
}

// State implements Machine.
func (m *remoteMachine) State(ctx context.Context) (State, error) {
	var st wire.State
	if err := m.r.call(ctx, http.MethodGet, m.path("/state"), nil, &st); err != nil {
		return "", err
	}
	return State(st.State), nil
}

// Info implements Machine.
func (m *remoteMachine) Info(ctx context.Context) (Info, error) {
	var info Info
	err := m.r.call(ctx, http.MethodGet, m.path(""), nil, &info)
	return info, err
}

// ConsoleLog implements Machine.
func (m *remoteMachine) ConsoleLog(ctx context.Context) ([]byte, error) {
	resp, err := m.r.request(ctx, http.MethodGet, m.path("/console"), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("console log of %s: %w", m.name, err)
	}
	return data, nil
}

// IP implements Machine: the server waits for the address until ctx's
// deadline (its default, DefaultIPTimeout for Local, when ctx has none).
func (m *remoteMachine) IP(ctx context.Context, slot int) (Address, error) {
	var a Address
	q := "/ip?slot=" + strconv.Itoa(slot)
	if _, ok := ctx.Deadline(); ok {
		q += "&wait=" + remaining(ctx, 0)
	}
	err := m.r.call(ctx, http.MethodGet, m.path(q), nil, &a)
	return a, err
}

// Relabel implements Machine.
func (m *remoteMachine) Relabel(ctx context.Context, set map[string]string, remove []string) error {
	return m.r.call(ctx, http.MethodPost, m.path("/labels"), wire.Relabel{Set: set, Remove: remove}, nil)
}

// Set implements Machine.
func (m *remoteMachine) Set(ctx context.Context, c Change) error {
	req := wire.Change{MemorySize: c.MemorySize, CPUCount: c.CPUCount, DiskSize: c.DiskSize}
	if c.Hardware != nil {
		req.Hardware = &wire.HardwareChoice{Model: c.Hardware.Model, Spec: c.Hardware.Spec}
	}
	return m.r.call(ctx, http.MethodPatch, m.path(""), req, nil)
}

// Exec implements Machine: one request, answered when the command ends.
func (m *remoteMachine) Exec(ctx context.Context, req ExecRequest) (ExecResult, error) {
	var res ExecResult
	err := m.r.call(ctx, http.MethodPost, m.path("/exec?timeout="+remaining(ctx, DefaultExecTimeout)), req, &res)
	return res, err
}
