package vmfest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"

	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
)

// Instance implements Server. Disk paths in an image spec are paths on the
// server; over a Unix socket (the same host) a relative one is made
// absolute here first.
func (r *Remote) Instance(ctx context.Context, name string, image Image, hardware Hardware, opts ...InstanceOption) (Machine, error) {
	if err := checkName("machine", name); err != nil {
		return nil, err
	}
	o := instanceOpts(opts)
	req := wire.CreateMachine{
		Name:     name,
		Image:    wire.ImageChoice{Model: image.Model, Spec: image.Spec, SSHKeys: image.SSHKeys},
		Hardware: wire.HardwareChoice{Model: hardware.Model, Spec: hardware.Spec},
		Labels:   o.labels,
		Driver:   o.driver,
	}
	if o.userData != nil {
		ud := string(o.userData)
		req.UserData = &ud
	}
	for _, a := range o.attach {
		req.Attach = append(req.Attach, wire.Attachment(a))
	}
	if image.Spec != nil && r.unix && image.Spec.Location != "" && !filepath.IsAbs(image.Spec.Location) {
		im := *image.Spec
		if abs, err := filepath.Abs(im.Location); err == nil {
			im.Location = abs
		}
		req.Image.Spec = &im
	}
	var info Info
	if err := r.call(ctx, http.MethodPost, wire.Prefix+"/machines", req, &info); err != nil {
		return nil, err
	}
	return &remoteMachine{r: r, name: name}, nil
}

// FindMachine implements Server.
func (r *Remote) FindMachine(ctx context.Context, name string) (Machine, error) {
	if err := checkName("machine", name); err != nil {
		return nil, err
	}
	m := &remoteMachine{r: r, name: name}
	if _, err := m.State(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Machines implements Server.
func (r *Remote) Machines(ctx context.Context) ([]Machine, error) {
	var items []struct {
		Name string `json:"name"`
	}
	if err := r.call(ctx, http.MethodGet, wire.Prefix+"/machines?fields=name", nil, &items); err != nil {
		return nil, err
	}
	out := make([]Machine, len(items))
	for i, it := range items {
		out[i] = &remoteMachine{r: r, name: it.Name}
	}
	return out, nil
}

// HardwareModels implements Server.
func (r *Remote) HardwareModels(ctx context.Context) ([]string, error) {
	var names []string
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/hardware", nil, &names)
	return names, err
}

// HardwareModel implements Server.
func (r *Remote) HardwareModel(ctx context.Context, name string) (spec.Hardware, error) {
	if err := checkName("hardware model", name); err != nil {
		return spec.Hardware{}, err
	}
	var h spec.Hardware
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/hardware/"+name, nil, &h)
	return h, err
}

// AddHardwareModel implements Server.
func (r *Remote) AddHardwareModel(ctx context.Context, name string, h spec.Hardware) error {
	if err := checkName("hardware model", name); err != nil {
		return err
	}
	return r.call(ctx, http.MethodPut, wire.Prefix+"/hardware/"+name, h, nil)
}

// RemoveHardwareModel implements Server.
func (r *Remote) RemoveHardwareModel(ctx context.Context, name string) error {
	if err := checkName("hardware model", name); err != nil {
		return err
	}
	return r.call(ctx, http.MethodDelete, wire.Prefix+"/hardware/"+name, nil, nil)
}

// SetupModel implements Server: the server fetches source (an http(s) URL,
// or a path on the server inside its allowed directories) as an operation,
// and opts.Progress receives the operation's progress.
func (r *Remote) SetupModel(ctx context.Context, source string, opts SetupOptions) (model.ImageModel, error) {
	req := wire.SetupModel{Source: source, ID: opts.ID, SHA256: opts.SHA256, Meta: opts.Meta, Overrides: opts.Overrides, Replace: opts.Replace}
	if r.unix && !strings.Contains(source, "://") && !filepath.IsAbs(source) {
		if abs, err := filepath.Abs(source); err == nil {
			req.Source = abs
		}
	}
	op, err := r.operation(ctx, wire.Prefix+"/models", req, opts.Progress)
	if err != nil {
		return model.ImageModel{}, err
	}
	var m model.ImageModel
	if err := json.Unmarshal(op.Result, &m); err != nil {
		return model.ImageModel{}, fmt.Errorf("setup-model: bad result from the server: %w", err)
	}
	return m, nil
}

// Models implements Server.
func (r *Remote) Models(ctx context.Context) ([]model.ImageModel, error) {
	var ms []model.ImageModel
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/models", nil, &ms)
	return ms, err
}

// Model implements Server.
func (r *Remote) Model(ctx context.Context, id string) (model.ImageModel, error) {
	if err := checkName("image model", id); err != nil {
		return model.ImageModel{}, err
	}
	var m model.ImageModel
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/models/"+id, nil, &m)
	return m, err
}

// RemoveModel implements Server.
func (r *Remote) RemoveModel(ctx context.Context, id string) error {
	if err := checkName("image model", id); err != nil {
		return err
	}
	return r.call(ctx, http.MethodDelete, wire.Prefix+"/models/"+id, nil, nil)
}

// Networks implements Server.
func (r *Remote) Networks(ctx context.Context) ([]Network, error) {
	var ns []Network
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/networks", nil, &ns)
	return ns, err
}

// CreateNetwork implements Server.
func (r *Remote) CreateNetwork(ctx context.Context, n NetworkSpec) (Network, error) {
	if err := checkName("network", n.Name); err != nil {
		return Network{}, err
	}
	var out Network
	err := r.call(ctx, http.MethodPost, wire.Prefix+"/networks", n, &out)
	return out, err
}

// RemoveNetwork implements Server.
func (r *Remote) RemoveNetwork(ctx context.Context, name string) error {
	if err := checkName("network", name); err != nil {
		return err
	}
	return r.call(ctx, http.MethodDelete, wire.Prefix+"/networks/"+name, nil, nil)
}
