package vmfest

import (
	"context"
	"net/http"

	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/spec"
)

// CreateVolume implements Server.
func (r *Remote) CreateVolume(ctx context.Context, s VolumeSpec) (Volume, error) {
	if err := checkName("volume", s.Name); err != nil {
		return Volume{}, err
	}
	var v Volume
	err := r.call(ctx, http.MethodPost, wire.Prefix+"/volumes", s, &v)
	return v, err
}

// Volumes implements Server.
func (r *Remote) Volumes(ctx context.Context) ([]Volume, error) {
	var vs []Volume
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/volumes", nil, &vs)
	return vs, err
}

// Volume implements Server.
func (r *Remote) Volume(ctx context.Context, name string) (Volume, error) {
	if err := checkName("volume", name); err != nil {
		return Volume{}, err
	}
	var v Volume
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/volumes/"+name, nil, &v)
	return v, err
}

// RemoveVolume implements Server.
func (r *Remote) RemoveVolume(ctx context.Context, name string) error {
	if err := checkName("volume", name); err != nil {
		return err
	}
	return r.call(ctx, http.MethodDelete, wire.Prefix+"/volumes/"+name, nil, nil)
}

// Attach implements Machine.
func (m *remoteMachine) Attach(ctx context.Context, a Attachment) (spec.MountPoint, error) {
	var out wire.Attached
	err := m.r.call(ctx, http.MethodPost, m.path("/attach"), wire.Attachment(a), &out)
	return out.Slot, err
}

// Detach implements Machine.
func (m *remoteMachine) Detach(ctx context.Context, a Attachment) (spec.MountPoint, error) {
	var out wire.Attached
	err := m.r.call(ctx, http.MethodPost, m.path("/detach"), wire.Attachment(a), &out)
	return out.Slot, err
}
