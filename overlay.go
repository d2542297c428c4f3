package vmfest

import (
	"context"
	"syscall"

	"github.com/vmfest/vmfest/disk"
)

var errNotEmpty = syscall.ENOTEMPTY

// createOverlay writes a qcow2 overlay at path backed by base, through
// package disk: natively in one write and one fsync, with qemu-img
// (l.cfg.QEMUImg) only for what the native writer does not cover
// (disk.Fallback lists it). The base is only read.
func (l *Local) createOverlay(ctx context.Context, base, baseFormat, path string, size int64) error {
	return disk.New(l.cfg.QEMUImg).CreateOverlay(ctx, base, baseFormat, path, size)
}

// overlayBackingFormat reads the backing format that vmfest wrote into the
// header of a machine's overlay when it created it (the backing format
// header extension): the base's format for machines whose record predates
// base-format. It reads natively; every overlay vmfest writes has the
// extension.
func overlayBackingFormat(path string) (string, error) {
	return disk.Native{}.OverlayBackingFormat(context.Background(), path)
}
