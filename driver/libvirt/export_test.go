package libvirt

import "testing"

// NeedLibvirtd is needLibvirtd for the external tests (package libvirt_test).
func NeedLibvirtd(t *testing.T) { needLibvirtd(t) }
