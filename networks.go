package vmfest

import (
	"context"
	"errors"
	"fmt"
)

// TODO(issue 4): these are being implemented now; they are not to land as is.

// Networks implements Server.
func (l *Local) Networks(ctx context.Context) ([]Network, error) {
	return nil, fmt.Errorf("networks: %w", errors.ErrUnsupported)
}

// CreateNetwork implements Server.
func (l *Local) CreateNetwork(ctx context.Context, n NetworkSpec) (Network, error) {
	return Network{}, fmt.Errorf("create network: %w", errors.ErrUnsupported)
}

// RemoveNetwork implements Server.
func (l *Local) RemoveNetwork(ctx context.Context, name string) error {
	return fmt.Errorf("remove network: %w", errors.ErrUnsupported)
}

// IP implements Machine.
func (m *localMachine) IP(ctx context.Context, slot int) (Address, error) {
	return Address{}, fmt.Errorf("ip: %w", errors.ErrUnsupported)
}
