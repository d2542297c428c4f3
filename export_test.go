package vmfest

import (
	"testing"

	"github.com/vmfest/vmfest/spec"
)

// Test helpers exported to the external test package (remote_e2e_test.go),
// which can import package api (package vmfest's own tests cannot: api
// imports vmfest).

// NewTestServer is newTestServer.
func NewTestServer(t *testing.T) *Local { return newTestServer(t) }

// TinyImage is tinyImage.
func TinyImage(t *testing.T) spec.Image { return tinyImage(t) }

// BlankImage is blankImage.
func BlankImage(t *testing.T, dir string) spec.Image { return blankImage(t, dir) }
