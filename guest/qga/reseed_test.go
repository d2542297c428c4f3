package qga

import (
	"slices"
	"strings"
	"testing"
)

// TestReseedArguments checks vmfest-reseed-crng's refusals and that
// guest-info lists it; a valid call is not made here (it would reseed the
// host's CRNG: the e2e clone test makes it in a guest).
func TestReseedArguments(t *testing.T) {
	a := &Agent{}
	for _, tt := range []struct {
		name string
		args map[string]any
		want string
	}{
		{"not base64", map[string]any{"seed": "!!"}, "Invalid parameter 'seed'"},
		{"not a string", map[string]any{"seed": 7}, "Invalid arguments"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, qe := try(t, a, ReseedCommand, tt.args); qe == nil || !strings.Contains(qe.Desc, tt.want) {
				t.Fatalf("error %+v, want %q", qe, tt.want)
			}
		})
	}
	if !slices.Contains(Commands(), ReseedCommand) {
		t.Errorf("%s is not among the supported commands", ReseedCommand)
	}
}
