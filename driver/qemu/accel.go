package qemu

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
)

// Accelerator names.
const (
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
	AccelAuto = "auto"
)

// Host is what accelerator detection reads; fields are paths so tests can
// point them at fakes.
type Host struct {
	// KVMDevice is normally /dev/kvm.
	KVMDevice string
	// CPUInfo is normally /proc/cpuinfo.
	CPUInfo string
}

// DefaultHost is the real host's paths.
func DefaultHost() Host { return Host{KVMDevice: "/dev/kvm", CPUInfo: "/proc/cpuinfo"} }

// ChooseAccel decides between KVM and TCG. want is "kvm", "tcg", "auto" or
// empty (auto). Auto picks KVM only when the KVM device opens for reading and
// writing and the CPU flags include vmx or svm: a /dev/kvm that opens on a
// host without them (nested virtualization without VT-x passthrough) cannot
// run an ordinary guest. The returned note explains a fall-back to TCG and is
// empty otherwise.
func ChooseAccel(want string, h Host) (accel, note string, err error) {
	switch strings.ToLower(strings.TrimSpace(want)) {
	case AccelKVM:
		return AccelKVM, "", nil
	case AccelTCG:
		return AccelTCG, "", nil
	case "", AccelAuto:
	default:
		return "", "", fmt.Errorf("accelerator %q: allowed: kvm, tcg, auto", want)
	}
	f, err := os.OpenFile(h.KVMDevice, os.O_RDWR, 0)
	if err != nil {
		return AccelTCG, fmt.Sprintf("KVM unavailable (%v): using TCG software emulation, which is much slower", err), nil
	}
	f.Close()
	if !cpuHasVirt(h.CPUInfo) {
		return AccelTCG, "the CPU advertises neither vmx nor svm: using TCG software emulation, which is much slower", nil
	}
	return AccelKVM, "", nil
}

func cpuHasVirt(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "flags") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
		return false
	}
	return false
}
