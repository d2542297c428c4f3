package image

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// diskInfo is the part of `qemu-img info --output=json` read here.
type diskInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	FormatSpecific  struct {
		Data struct {
			DataFile string `json:"data-file"`
		} `json:"data"`
	} `json:"format-specific"`
}

func runQEMUImg(ctx context.Context, bin string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.Bytes(), fmt.Errorf("qemu-img %s: %w: %s", args[0], err, msg)
	}
	return stdout.Bytes(), nil
}

// inspect runs qemu-img info on a disk of a known format and refuses
// images that refer to other files (a backing file, an external data
// file): a published image must be self-contained.
func inspect(ctx context.Context, bin, path, format string) (diskInfo, error) {
	out, err := runQEMUImg(ctx, bin, "info", "-f", format, "--output=json", path)
	if err != nil {
		return diskInfo{}, fmt.Errorf("%w: the disk does not open as %s: %w", ErrCorrupt, format, err)
	}
	var info diskInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return diskInfo{}, fmt.Errorf("qemu-img info: %w", err)
	}
	if info.BackingFilename != "" {
		return info, fmt.Errorf("%w: the %s image refers to a backing file (%s); vmfest installs only self-contained images", ErrNotDiskImage, format, info.BackingFilename)
	}
	if info.FormatSpecific.Data.DataFile != "" {
		return info, fmt.Errorf("%w: the %s image keeps its data in another file (%s); vmfest installs only self-contained images", ErrNotDiskImage, format, info.FormatSpecific.Data.DataFile)
	}
	return info, nil
}

var convertPercent = regexp.MustCompile(`\((\d+(?:\.\d+)?)/100%\)`)

// convert writes src (in format) as a compact qcow2 at dst, reporting how
// far it got through progress (Done of Total bytes of the virtual size).
func convert(ctx context.Context, bin, src, format, dst string, size int64, progress func(done, total int64)) error {
	cmd := exec.CommandContext(ctx, bin, "convert", "-p", "-f", format, "-O", "qcow2", src, dst)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu-img convert: %w", err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Split(splitCR)
	for sc.Scan() {
		if m := convertPercent.FindStringSubmatch(sc.Text()); m != nil {
			if pct, err := strconv.ParseFloat(m[1], 64); err == nil {
				progress(int64(pct/100*float64(size)), size)
			}
		}
	}
	io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: qemu-img convert from %s: %v: %s", ErrCorrupt, format, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// splitCR splits qemu-img's progress output, which rewrites one line with
// carriage returns.
func splitCR(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// check runs qemu-img check on the converted qcow2.
func check(ctx context.Context, bin, path string) error {
	if _, err := runQEMUImg(ctx, bin, "check", "-q", "-f", "qcow2", path); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: the converted disk fails qemu-img check: %w", ErrCorrupt, err)
	}
	return nil
}
