// Package netnstest runs a test inside network and PID namespaces of its
// own, so that the bridges, taps, dnsmasq and QEMU processes it starts, and
// every packet it sends to a guest's address, stay inside them. The test
// binary re-runs itself, for that one test, under
// `unshare --net --pid --fork --mount-proc`: when the test ends the kernel
// kills whatever it left running and the namespace disappears with its
// interfaces, even if the test crashed.
package netnstest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

const envVar = "VMFEST_TEST_NETNS"

// wholePackage is envVar's value inside a namespace made by Wrap.
const wholePackage = "*"

// Wrap, called first in TestMain, re-runs the whole test binary inside
// fresh network and PID namespaces when it can (as root) and returns its
// exit status and true: TestMain exits with it. Inside them, or without
// root, it returns false and TestMain goes on to m.Run (without root, the
// tests that need a namespace skip themselves through Enter).
func Wrap() (int, bool) {
	switch os.Getenv(envVar) {
	case wholePackage:
		if err := loUp(); err != nil {
			fmt.Fprintln(os.Stderr, "netnstest:", err)
			return 1, true
		}
		return 0, false
	case "":
	default:
		return 0, false // a test re-run by Enter
	}
	if os.Geteuid() != 0 {
		return 0, false
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return 0, false
	}
	cmd := exec.Command(unshare, append([]string{"--net", "--pid", "--fork", "--mount-proc", "--kill-child", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), envVar+"="+wholePackage)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, true
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode(), true
	}
	fmt.Fprintln(os.Stderr, "netnstest: run the tests in a namespace of their own:", err)
	return 1, true
}

// Inside reports whether this process runs in the namespaces Wrap made
// for the whole binary.
func Inside() bool { return os.Getenv(envVar) == wholePackage }

func loUp() error {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("bring lo up in the test's network namespace: %w", err)
	}
	return nil
}

// Enter reports whether the caller runs inside the test's namespace and
// should go on. In the parent it runs the test again inside a fresh
// namespace, reports that run's outcome as its own, and returns false: the
// caller then returns at once. Without root the test is skipped.
func Enter(t *testing.T) bool {
	t.Helper()
	switch os.Getenv(envVar) {
	case wholePackage:
		return true // the whole binary runs in a namespace (Wrap)
	case t.Name():
		if err := loUp(); err != nil {
			t.Fatal(err)
		}
		return true
	}
	if os.Getenv(envVar) != "" {
		t.Fatalf("%s runs inside the namespace of %s: call Enter only from top-level tests", t.Name(), os.Getenv(envVar))
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs in network and PID namespaces of its own (unshare)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("unshare (util-linux) is needed: %v", err)
	}
	var args []string
	skip := false
	for _, a := range os.Args[1:] {
		if skip {
			skip = false
			continue
		}
		if a == "-test.run" || a == "-test.skip" || a == "-test.count" {
			skip = true
			continue
		}
		// The parent runs the test -count times, each in a fresh
		// namespace: the child runs it once.
		if strings.HasPrefix(a, "-test.run=") || strings.HasPrefix(a, "-test.skip=") || strings.HasPrefix(a, "-test.v") || strings.HasPrefix(a, "-test.count=") {
			continue
		}
		args = append(args, a)
	}
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	args = append([]string{"--net", "--pid", "--fork", "--mount-proc", "--kill-child", os.Args[0], "-test.v", "-test.count=1", "-test.run=" + strings.Join(parts, "/")}, args...)
	cmd := exec.Command(unshare, args...)
	cmd.Env = append(os.Environ(), envVar+"="+t.Name())
	out, err := cmd.CombinedOutput()
	switch {
	case err != nil:
		t.Fatalf("in its own network namespace: %v\n%s", err, out)
	case strings.Contains(string(out), "--- SKIP: "+t.Name()):
		t.Skipf("skipped in its own network namespace:\n%s", out)
	case !strings.Contains(string(out), "--- PASS: "+t.Name()):
		t.Fatalf("did not run in its own network namespace:\n%s", out)
	}
	t.Logf("in its own network namespace:\n%s", out)
	return false
}
