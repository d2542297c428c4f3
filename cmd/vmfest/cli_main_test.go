package main

import (
	"os"
	"testing"
)

// TestMain lets the test binary stand in for vmfest where a test has
// another program run vmfest (ssh's ProxyCommand of vmfest inventory
// --server names os.Executable): with VMFEST_TEST_CLI=1 it is the CLI.
func TestMain(m *testing.M) {
	if os.Getenv("VMFEST_TEST_CLI") == "1" {
		main()
	}
	os.Exit(m.Run())
}
