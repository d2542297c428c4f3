package image

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
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
		Type string `json:"type"`
		Data struct {
			DataFile string `json:"data-file"`
			Extents  []struct {
				Filename string `json:"filename"`
			} `json:"extents"`
		} `json:"data"`
	} `json:"format-specific"`
}

// runBoxed runs qemu-img with args in the box and returns its stdout.
func runBoxed(ctx context.Context, b box, args ...string) ([]byte, error) {
	cmd := b.command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return stdout.Bytes(), qemuImgFailed(args[0], err, stderr.String(), stdout.String())
	}
	return stdout.Bytes(), nil
}

// qemuImgFailed words a failed boxed run: the box's own failure (bwrap
// could not build it) is ErrNoBox, anything else qemu-img's.
func qemuImgFailed(verb string, err error, stderr, stdout string) error {
	msg := strings.TrimSpace(stderr)
	if msg == "" {
		msg = strings.TrimSpace(stdout)
	}
	if strings.HasPrefix(msg, "bwrap:") || strings.HasPrefix(msg, "setpriv:") {
		return fmt.Errorf("%w: %s", ErrNoBox, msg)
	}
	return fmt.Errorf("qemu-img %s: %w: %s", verb, err, msg)
}

// inspect runs qemu-img info, boxed, on the box's file name of a known
// format and refuses images that refer to other files (a backing file,
// an external data file, a VMDK extent other than the file itself): a
// published image must be self-contained.
func inspect(ctx context.Context, b box, name, format string) (diskInfo, error) {
	self := b.inside(name)
	out, err := runBoxed(ctx, b, "info", "-f", format, "--output=json", self)
	if err != nil {
		if ctx.Err() != nil || isNoBox(err) {
			return diskInfo{}, err
		}
		return diskInfo{}, fmt.Errorf("%w: the disk does not open as %s: %w", ErrCorrupt, format, err)
	}
	var info diskInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return diskInfo{}, fmt.Errorf("qemu-img info: %w", err)
	}
	if info.BackingFilename != "" {
		return info, notSelfContained("the %s image refers to a backing file", format)
	}
	if info.FormatSpecific.Data.DataFile != "" {
		return info, notSelfContained("the %s image keeps its data in another file", format)
	}
	for _, e := range info.FormatSpecific.Data.Extents {
		if e.Filename != self {
			return info, notSelfContained("the %s image has an extent in another file", format)
		}
	}
	return info, nil
}

// measure asks qemu-img, boxed, how many bytes the qcow2 conversion of
// the box's file name needs.
func measure(ctx context.Context, b box, name, format string) (int64, error) {
	out, err := runBoxed(ctx, b, "measure", "-f", format, "-O", "qcow2", "--output=json", b.inside(name))
	if err != nil {
		if ctx.Err() != nil || isNoBox(err) {
			return 0, err
		}
		return 0, fmt.Errorf("%w: the disk does not open as %s: %w", ErrCorrupt, format, err)
	}
	var m struct {
		Required int64 `json:"required"`
	}
	if err := json.Unmarshal(out, &m); err != nil {
		return 0, fmt.Errorf("qemu-img measure: %w", err)
	}
	return m.Required, nil
}

var convertPercent = regexp.MustCompile(`\((\d+(?:\.\d+)?)/100%\)`)

// convert writes the box's file src (in format) as a compact qcow2 named
// dst in the box, boxed, reporting how far it got through progress (Done
// of Total bytes of the virtual size).
func convert(ctx context.Context, b box, src, format, dst string, size int64, progress func(done, total int64)) error {
	cmd := b.command(ctx, "convert", "-p", "-f", format, "-O", "qcow2", b.inside(src), b.inside(dst))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%w: %w", ErrNoBox, err)
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
		if err := qemuImgFailed("convert", err, stderr.String(), ""); isNoBox(err) {
			return err
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

// check runs qemu-img check, boxed, on the converted qcow2.
func check(ctx context.Context, b box, name string) error {
	if _, err := runBoxed(ctx, b, "check", "-q", "-f", "qcow2", b.inside(name)); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if isNoBox(err) {
			return err
		}
		return fmt.Errorf("%w: the converted disk fails qemu-img check: %w", ErrCorrupt, err)
	}
	return nil
}
