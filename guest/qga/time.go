package qga

import (
	"encoding/json"
	"os/exec"
	"syscall"
)

// setTime implements guest-set-time as qemu-ga 7.2 does: with "time"
// (nanoseconds since the Unix epoch) it sets the system clock to it; without,
// it sets the system clock from the hardware clock (hwclock -s). vmfest
// calls it right after a saved machine resumes, whose clock stood still
// while it was saved.
func (a *Agent) setTime(args json.RawMessage) (any, error) {
	var p struct {
		Time *json.Number `json:"time"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	if p.Time == nil {
		if out, err := exec.Command("hwclock", "-s").CombinedOutput(); err != nil {
			return nil, Errorf("hwclock failed to set the system time from the hardware clock: %v: %s", err, out)
		}
		a.logf("guest-set-time: from the hardware clock")
		return struct{}{}, nil
	}
	ns, err := p.Time.Int64()
	if err != nil {
		return nil, Errorf("Invalid parameter type for 'time', expected: integer")
	}
	if ns < 0 {
		return nil, Errorf("Invalid parameter 'time': the time must be after the Unix epoch")
	}
	tv := syscall.NsecToTimeval(ns)
	if err := syscall.Settimeofday(&tv); err != nil {
		return nil, Errorf("Failed to set time to guest: %v", err)
	}
	a.logf("guest-set-time: %d", ns)
	return struct{}{}, nil
}
