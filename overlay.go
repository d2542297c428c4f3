package vmfest

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
)

var errNotEmpty = syscall.ENOTEMPTY

// createOverlay writes a qcow2 overlay at path backed by base (read-only:
// the base image is never opened for writing).
func (l *Local) createOverlay(ctx context.Context, base, baseFormat, path string) error {
	cmd := exec.CommandContext(ctx, l.cfg.QEMUImg, "create", "-q", "-f", "qcow2", "-F", baseFormat, "-b", base, path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("create overlay with qemu-img: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
