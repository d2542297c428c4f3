package driver

import (
	"context"
	"time"
)

// Snapshot is an internal snapshot of a machine's qcow2 disk: the disk's
// state, and with MemorySize > 0 the machine's memory and device state too.
type Snapshot struct {
	// Tag is the snapshot's name.
	Tag string `json:"name"`
	// Created is when it was taken.
	Created time.Time `json:"created"`
	// MemorySize is the size of the saved memory and device state; 0 for a
	// disk-only snapshot (taken of a powered-off machine).
	MemorySize int64 `json:"memory-size,omitempty"`
	// VMClock is how long the machine had run when it was taken.
	VMClock time.Duration `json:"vm-clock,omitempty"`
}

// Snapshotter keeps snapshots inside a machine's qcow2 disk (disk, an
// absolute path: the file the machine writes, never its base). running
// says whether the machine's hypervisor has the disk open (running or
// paused): then a snapshot holds memory too, and is taken and loaded by
// the hypervisor; else the disk is changed directly and a snapshot is of
// the disk alone. A driver that implements it announces
// Features.Snapshots.
type Snapshotter interface {
	// Snapshots lists the disk's snapshots, oldest first.
	Snapshots(ctx context.Context, m Machine, disk string, running bool) ([]Snapshot, error)
	// SaveSnapshot takes snapshot tag. A running machine is paused for it
	// and continues after.
	SaveSnapshot(ctx context.Context, m Machine, disk, tag string, running bool) error
	// LoadSnapshot reverts to snapshot tag: a running machine continues
	// from the snapshot's memory (it must have some); a powered-off one
	// gets the snapshot's disk.
	LoadSnapshot(ctx context.Context, m Machine, disk, tag string, running bool) error
	// DeleteSnapshot deletes snapshot tag.
	DeleteSnapshot(ctx context.Context, m Machine, disk, tag string, running bool) error
}
