package vmfest

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
)

// TODO(issue 3): these are being implemented now; they are not to land as is.

// AddHardwareModel implements Server.
func (l *Local) AddHardwareModel(ctx context.Context, name string, h spec.Hardware) error {
	return fmt.Errorf("add hardware model: %w", errors.ErrUnsupported)
}

// RemoveHardwareModel implements Server.
func (l *Local) RemoveHardwareModel(ctx context.Context, name string) error {
	return fmt.Errorf("remove hardware model: %w", errors.ErrUnsupported)
}

// SetupModel implements Server.
func (l *Local) SetupModel(ctx context.Context, source string, opts SetupOptions) (model.ImageModel, error) {
	return model.ImageModel{}, fmt.Errorf("setup-model: %w", errors.ErrUnsupported)
}

// Models implements Server.
func (l *Local) Models(ctx context.Context) ([]model.ImageModel, error) {
	return nil, fmt.Errorf("models: %w", errors.ErrUnsupported)
}

// Model implements Server.
func (l *Local) Model(ctx context.Context, id string) (model.ImageModel, error) {
	return model.ImageModel{}, fmt.Errorf("model: %w", errors.ErrUnsupported)
}

// RemoveModel implements Server.
func (l *Local) RemoveModel(ctx context.Context, id string) error {
	return fmt.Errorf("remove model: %w", errors.ErrUnsupported)
}
