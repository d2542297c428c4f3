package qga

import (
	"strings"
	"testing"
)

// TestSetTimeArguments checks guest-set-time's refusals; a valid time is
// not set here (it would set the host's clock).
func TestSetTimeArguments(t *testing.T) {
	a := &Agent{}
	for _, tt := range []struct {
		name string
		args map[string]any
		want string
	}{
		{"not a number", map[string]any{"time": "soon"}, "Invalid arguments"},
		{"not an integer", map[string]any{"time": 1.5}, "Invalid parameter type for 'time', expected: integer"},
		{"before the epoch", map[string]any{"time": -1}, "Invalid parameter 'time': the time must be after the Unix epoch"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, qe := try(t, a, "guest-set-time", tt.args); qe == nil || !strings.Contains(qe.Desc, tt.want) {
				t.Fatalf("error %+v, want %q", qe, tt.want)
			}
		})
	}
}
