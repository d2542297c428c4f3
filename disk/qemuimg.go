package disk

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// QEMUImg is the Manager that runs qemu-img. It handles every format
// qemu-img does, at the price of a process start (8-25 ms) per call. Reads
// pass --force-share, so they work on the disk of a running machine.
type QEMUImg struct {
	// Binary is the qemu-img to run; "" means qemu-img on $PATH.
	Binary string
}

// CreateOverlay implements Manager with `qemu-img create -b`. It creates
// path itself first (0600, failing if it exists, as Native does), since
// qemu-img would overwrite a file; on failure it removes it again.
func (q QEMUImg) CreateOverlay(ctx context.Context, base, baseFormat, path string, size int64) error {
	args := []string{"create", "-q", "-f", "qcow2", "-F", baseFormat, "-b", base, path}
	if size != 0 {
		baseSize, err := q.VirtualSize(ctx, base, baseFormat)
		if err != nil {
			return err
		}
		if size < baseSize {
			return fmt.Errorf("%w: %d bytes asked, base %s has %d", ErrTooSmall, size, base, baseSize)
		}
		args = append(args, strconv.FormatInt(size, 10))
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	f.Close()
	if _, err := q.run(ctx, args...); err != nil {
		os.Remove(path)
		return fmt.Errorf("create overlay with qemu-img: %w", err)
	}
	return nil
}

// CreateBlank implements Manager with `qemu-img create`, creating path
// itself first as CreateOverlay does.
func (q QEMUImg) CreateBlank(ctx context.Context, path string, size int64) error {
	if size <= 0 {
		return fmt.Errorf("create disk %s: size %d: must be more than 0 bytes", path, size)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create disk: %w", err)
	}
	f.Close()
	if _, err := q.run(ctx, "create", "-q", "-f", "qcow2", path, strconv.FormatInt(size, 10)); err != nil {
		os.Remove(path)
		return fmt.Errorf("create disk with qemu-img: %w", err)
	}
	return nil
}

// info is the part of `qemu-img info --output=json` read here.
type info struct {
	VirtualSize   int64  `json:"virtual-size"`
	BackingFormat string `json:"backing-filename-format"`
}

// VirtualSize implements Manager with `qemu-img info`.
func (q QEMUImg) VirtualSize(ctx context.Context, path, format string) (int64, error) {
	in, err := q.info(ctx, path, format)
	if err != nil {
		return 0, fmt.Errorf("read base image %s: %w", path, err)
	}
	return in.VirtualSize, nil
}

// OverlayBackingFormat implements Manager with `qemu-img info`.
func (q QEMUImg) OverlayBackingFormat(ctx context.Context, path string) (string, error) {
	in, err := q.info(ctx, path, "qcow2")
	if err != nil {
		return "", fmt.Errorf("read overlay %s: %w", path, err)
	}
	if in.BackingFormat == "" {
		return "", fmt.Errorf("overlay %s: no backing format in its header", path)
	}
	return checkBackingFormat(path, in.BackingFormat)
}

func (q QEMUImg) info(ctx context.Context, path, format string) (info, error) {
	out, err := q.run(ctx, "info", "--output=json", "--force-share", "-f", format, path)
	if err != nil {
		return info{}, err
	}
	var in info
	if err := json.Unmarshal(out, &in); err != nil {
		return info{}, fmt.Errorf("qemu-img info: %w", err)
	}
	return in, nil
}

// run runs qemu-img with args and returns its stdout; its error carries
// qemu-img's own message.
func (q QEMUImg) run(ctx context.Context, args ...string) ([]byte, error) {
	bin := q.Binary
	if bin == "" {
		bin = "qemu-img"
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Grow implements Manager with `qemu-img resize` (never --shrink).
func (q QEMUImg) Grow(ctx context.Context, path string, size int64) error {
	cur, err := q.VirtualSize(ctx, path, "qcow2")
	if err != nil {
		return err
	}
	switch {
	case size < cur:
		return fmt.Errorf("%w: %d bytes asked, the disk has %d", ErrTooSmall, size, cur)
	case size == cur:
		return nil
	}
	if _, err := q.run(ctx, "resize", "-q", "-f", "qcow2", path, strconv.FormatInt(size, 10)); err != nil {
		return fmt.Errorf("grow %s with qemu-img: %w", path, err)
	}
	return nil
}
