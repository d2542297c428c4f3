package vmfest

import (
	"context"
	"net/http"

	"github.com/vmfest/vmfest/api/wire"
)

// TakeSnapshot implements Machine.
func (m *remoteMachine) TakeSnapshot(ctx context.Context, name string) (Snapshot, error) {
	if err := checkName("snapshot", name); err != nil {
		return Snapshot{}, err
	}
	var s Snapshot
	err := m.r.call(ctx, http.MethodPost, m.path("/snapshots"), wire.SnapshotRequest{Name: name}, &s)
	return s, err
}

// Snapshots implements Machine.
func (m *remoteMachine) Snapshots(ctx context.Context) ([]Snapshot, error) {
	var out []Snapshot
	err := m.r.call(ctx, http.MethodGet, m.path("/snapshots"), nil, &out)
	return out, err
}

// RestoreSnapshot implements Machine.
func (m *remoteMachine) RestoreSnapshot(ctx context.Context, name string) error {
	if err := checkName("snapshot", name); err != nil {
		return err
	}
	return m.r.call(ctx, http.MethodPost, m.path("/snapshots/"+name+"/restore"), nil, nil)
}

// DeleteSnapshot implements Machine.
func (m *remoteMachine) DeleteSnapshot(ctx context.Context, name string) error {
	if err := checkName("snapshot", name); err != nil {
		return err
	}
	return m.r.call(ctx, http.MethodDelete, m.path("/snapshots/"+name), nil, nil)
}
