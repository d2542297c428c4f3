package qemu

import (
	"errors"
	"fmt"
	"testing"

	"github.com/vmfest/vmfest/driver"
)

// TestAgentErrorUnsupported checks which agent errors say the agent has
// no such command (driver.ErrUnsupported): by class, and, through
// libvirt, which keeps only the description, by its words.
func TestAgentErrorUnsupported(t *testing.T) {
	for _, tt := range []struct {
		err  *AgentError
		want bool
	}{
		{&AgentError{Command: "vmfest-reidentify", Class: "CommandNotFound", Desc: "The command vmfest-reidentify has not been found"}, true},
		{&AgentError{Command: "vmfest-reidentify", Class: "GenericError", Desc: "The command vmfest-reidentify has not been found"}, true},
		{&AgentError{Command: "vmfest-reidentify", Class: "GenericError", Desc: "network[0]: the guest has no interface"}, false},
	} {
		err := fmt.Errorf("wrapped: %w", tt.err)
		if got := errors.Is(err, driver.ErrUnsupported); got != tt.want {
			t.Errorf("%v: errors.Is ErrUnsupported = %v, want %v", tt.err, got, tt.want)
		}
	}
}
