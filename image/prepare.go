package image

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vmfest/vmfest/spec"
)

// Files inside a staging directory.
const (
	// StagedDisk is the converted, checked, read-only qcow2.
	StagedDisk = "disk.qcow2"
	inputDisk  = "disk.in"
)

// Options tunes Prepare.
type Options struct {
	// SHA256 is the expected digest of what is fetched (the compressed
	// file as published); default: read from NAME.sha256, STEM.sha256 or
	// SHA256SUMS beside the source, when one lists it.
	SHA256 string
	// Meta is the image metadata; default: STEM.meta beside the source
	// (JSON, YAML or VMFest's EDN), else what a .box or .ova says.
	Meta *spec.Image
	// Overrides, when set, are laid over the metadata field by field
	// (see Merge).
	Overrides *spec.Image
	// Progress, when set, receives progress reports.
	Progress func(Progress)
	// Policy limits where a remote source and its redirects may connect
	// (see FetchPolicy); the zero value allows every address.
	Policy FetchPolicy
}

// Staged is a prepared image: a checked, read-only qcow2 in Dir, waiting
// to be installed (moved) into the registry.
type Staged struct {
	// Dir is the staging directory; it holds StagedDisk.
	Dir string
	// Meta is the image metadata (its location is unset).
	Meta spec.Image
	// Source is the canonical source.
	Source string
	// SHA256 is the digest of what was fetched.
	SHA256 string
	// Verified says SHA256 was checked against an expected digest.
	Verified bool
	// Compression, Container and Format describe what was fetched: the
	// compression (none, gzip, xz, zstd, bzip2), the archive ("", box,
	// ova, tar) and the disk's format as qemu-img names it.
	Compression, Container, Format string
	// VirtualSize is the disk's size as the guest sees it.
	VirtualSize int64
}

// Disk is the path of the staged qcow2.
func (s *Staged) Disk() string { return filepath.Join(s.Dir, StagedDisk) }

// Cleanup removes the staging directory unless it was installed (moved
// away). Safe to repeat.
func (s *Staged) Cleanup() error {
	if s == nil || s.Dir == "" {
		return nil
	}
	return os.RemoveAll(s.Dir)
}

// SourceLock is the held lock of one source: its partial download file in
// the cache, locked so that concurrent setups of the same source (in any
// process) run one after another and download once.
type SourceLock struct {
	f    *os.File
	path string
	keep bool
}

// PartialPath is the cache file holding the partial download of source.
func PartialPath(cacheDir string, src Source) string {
	return filepath.Join(cacheDir, sourceKey(src)+".part")
}

// sourceKey names a source's files in the cache.
func sourceKey(src Source) string {
	sum := sha256.Sum256([]byte(src.String()))
	return hex.EncodeToString(sum[:8])
}

// workPrefix starts the names of a source's staging directories. Only the
// holder of the source's lock makes them, so the holder may remove any it
// finds: they are what a crashed setup of the same source left.
func workPrefix(src Source) string { return ".work-" + sourceKey(src) + "-" }

// LockSource takes the lock of source, waiting while another setup of it
// runs (bounded by ctx).
func LockSource(ctx context.Context, cacheDir string, src Source) (*SourceLock, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	p := PartialPath(cacheDir, src)
	f, err := lockFile(ctx, p)
	if err != nil {
		return nil, err
	}
	return &SourceLock{f: f, path: p}, nil
}

// Unlock releases the lock. The partial download is removed unless the
// download broke off (then the next setup resumes it). Safe to repeat.
func (l *SourceLock) Unlock() {
	if l == nil || l.f == nil {
		return
	}
	if fi, err := l.f.Stat(); !l.keep || err != nil || fi.Size() == 0 {
		os.Remove(l.path) // before unlocking: a waiter then sees a new file
	}
	l.f.Close()
	l.f = nil
}

// Prepare fetches source, verifies it and converts it to a read-only qcow2
// in a staging directory under cfg.CacheDir. lock must be source's held
// lock. On error nothing is left but, after a download that broke off,
// the partial download (which the next try resumes).
func Prepare(ctx context.Context, cfg Config, lock *SourceLock, src Source, opts Options) (st *Staged, err error) {
	cfg = cfg.withDefaults().withPolicy(opts.Policy)
	defer func() { err = opts.Policy.conceal(ctx, cfg.Logger, src, err) }()
	if lock == nil || lock.f == nil {
		return nil, errors.New("prepare: the source lock is not held")
	}
	report := func(p Progress) {
		if opts.Progress != nil {
			opts.Progress(p)
		}
	}
	st = &Staged{Source: src.String()}

	// Metadata and checksum first: cheap, and a bad one fails fast.
	meta, err := findMeta(ctx, cfg, src, opts.Meta)
	if err != nil {
		return nil, err
	}
	want, wantFrom, err := findSHA256(ctx, cfg, src, opts.SHA256)
	if err != nil {
		return nil, err
	}

	if stale, _ := filepath.Glob(filepath.Join(cfg.CacheDir, workPrefix(src)+"*")); len(stale) > 0 {
		for _, d := range stale {
			cfg.Logger.Debug("removing what an interrupted setup left", "dir", d)
			os.RemoveAll(d)
		}
	}
	dir, err := os.MkdirTemp(cfg.CacheDir, workPrefix(src)) // 0700
	if err != nil {
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	st.Dir = dir
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	// The box first: without it nothing is fetched (fail closed).
	b, err := newBox(cfg, filepath.Join(dir, boxDirName))
	if err != nil {
		return nil, err
	}
	if err := b.prepareDir(); err != nil {
		return nil, err
	}

	// Fetch, hash, decompress and unpack in one streaming pass.
	in, total, closeIn, err := openStream(ctx, cfg, lock, src)
	if err != nil {
		return nil, err
	}
	defer closeIn()
	hasher := sha256.New()
	counted := &progressReader{r: in, phase: PhaseDownload, total: total, report: report}
	stream := io.TeeReader(counted, hasher)
	input := filepath.Join(b.dir, inputDisk)
	archive, err := unpack(stream, st, input, cfg)
	if err != nil {
		return nil, fetchFailed(lock, err)
	}
	if _, err := io.Copy(io.Discard, stream); err != nil { // the rest: padding, trailers
		return nil, fetchFailed(lock, err)
	}
	counted.finish()
	st.SHA256 = hex.EncodeToString(hasher.Sum(nil))
	if want != "" {
		if st.SHA256 != want {
			return nil, fmt.Errorf("%w: %s has sha256 %s, but %s says %s: the file is damaged or was replaced; nothing was installed", ErrChecksum, src, st.SHA256, wantFrom, want)
		}
		st.Verified = true
	}

	disk, err := convertConfined(ctx, cfg, b, st, report)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(disk, st.Disk()); err != nil {
		return nil, fmt.Errorf("staging: %w", err)
	}
	if err := os.RemoveAll(b.dir); err != nil {
		return nil, fmt.Errorf("staging: %w", err)
	}

	// Metadata: explicit or sidecar over the archive's, overrides on top.
	m := archive.meta
	if meta != nil {
		m = Merge(m, *meta)
	}
	if opts.Overrides != nil {
		m = Merge(m, *opts.Overrides)
	}
	m.Location = ""
	m.Immutable = true
	st.Meta = m
	st.Container = archive.container
	return st, nil
}

// fetchFailed keeps the partial download when the failure was the
// download's own (so the next try resumes), and words stream errors.
func fetchFailed(lock *SourceLock, err error) error {
	if errors.Is(err, ErrSource) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		lock.keep = true
		return fmt.Errorf("%w; run the same command again to resume the download", err)
	}
	return err
}

// openStream opens the source for reading from its first byte. A remote
// source resumes from the partial download in the lock file and appends
// what arrives to it. total is the source's size, -1 when unknown.
func openStream(ctx context.Context, cfg Config, lock *SourceLock, src Source) (io.Reader, int64, func(), error) {
	if !src.Remote() {
		f, err := os.Open(src.Path)
		if errors.Is(err, os.ErrNotExist) {
			return nil, 0, nil, fmt.Errorf("%w: %s: no such file", ErrSource, src.Path)
		}
		if err != nil {
			return nil, 0, nil, fmt.Errorf("%w: %w", ErrSource, err)
		}
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			f.Close()
			return nil, 0, nil, fmt.Errorf("%w: %s: not a regular file", ErrSource, src.Path)
		}
		return f, fi.Size(), func() { f.Close() }, nil
	}
	part := lock.f
	fi, err := part.Stat()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("cache: %w", err)
	}
	have := fi.Size()
	rr, start, err := openRemote(ctx, cfg, src.String(), have)
	if err != nil {
		return nil, 0, nil, err
	}
	if start < have {
		cfg.Logger.Debug("the server does not resume; starting over", "url", src.String(), "had", have)
		if err := part.Truncate(start); err != nil {
			rr.Close()
			return nil, 0, nil, fmt.Errorf("cache: %w", err)
		}
	} else if have > 0 {
		cfg.Logger.Debug("resuming a partial download", "url", src.String(), "at", have)
	}
	if _, err := part.Seek(start, io.SeekStart); err != nil {
		rr.Close()
		return nil, 0, nil, fmt.Errorf("cache: %w", err)
	}
	r := io.MultiReader(io.NewSectionReader(part, 0, start), io.TeeReader(rr, part))
	return r, rr.total, func() { rr.Close() }, nil
}

// unpack decompresses the stream and writes its disk to disk: the stream
// itself, or the disk inside a .box, .ova or tar.
func unpack(stream io.Reader, st *Staged, disk string, cfg Config) (archiveInfo, error) {
	br := bufio.NewReaderSize(stream, 1<<20)
	dr, kind, closeDR, err := decompress(br)
	if err != nil {
		return archiveInfo{}, err
	}
	defer closeDR()
	st.Compression = kind
	dbr := bufio.NewReaderSize(&capReader{r: &decompressErrors{r: dr, kind: kind}, limit: cfg.MaxDiskSize}, 1<<20)
	head, _ := dbr.Peek(512)
	if isTar(head) {
		info, err := extractArchive(dbr, disk, func(msg string, args ...any) { cfg.Logger.Warn(msg, args...) })
		if err != nil {
			return info, err
		}
		_, err = io.Copy(io.Discard, dbr) // to the end, so trailers are checked
		return info, err
	}
	f, err := os.OpenFile(disk, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return archiveInfo{}, fmt.Errorf("staging: %w", err)
	}
	_, err = writeSparse(f, dbr)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return archiveInfo{}, err
}

// decompressErrors words a decoder's errors: which compression, and that
// the file is damaged or cut short. Fetch errors pass through unchanged.
type decompressErrors struct {
	r    io.Reader
	kind string
}

func (d *decompressErrors) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err == nil || err == io.EOF || d.kind == CompressionNone {
		return n, err
	}
	if errors.Is(err, ErrSource) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return n, err
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return n, fmt.Errorf("%w: the %s stream ends early: the file is truncated", ErrCorrupt, d.kind)
	}
	return n, fmt.Errorf("%w: the %s stream is damaged: %v", ErrCorrupt, d.kind, err)
}

// convertConfined turns the unpacked disk (inputDisk in the box's
// directory) into a checked qcow2 and returns its path, still in the
// box's directory, owned by the caller and mode 0400. In order: the
// native inspector reads the headers (qemu-img never sees a disk that
// refers to another file), boxed qemu-img info and measure, the size caps
// and the free space, boxed convert and check, and the native inspector
// again on the result.
func convertConfined(ctx context.Context, cfg Config, b box, st *Staged, report func(Progress)) (string, error) {
	input := filepath.Join(b.dir, inputDisk)
	native, err := InspectFile(input, "")
	if err != nil {
		return "", err
	}
	st.Format = native.Format
	if native.VirtualSize > cfg.MaxVirtualSize {
		return "", tooLarge("the disk's virtual size is %d bytes, more than the limit of %d (Config.MaxVirtualSize)", native.VirtualSize, cfg.MaxVirtualSize)
	}
	if err := b.give(input); err != nil {
		return "", err
	}
	info, err := inspect(ctx, b, inputDisk, native.Format)
	if err != nil {
		return "", err
	}
	if info.VirtualSize < 0 || info.VirtualSize > cfg.MaxVirtualSize {
		return "", tooLarge("the disk's virtual size is %d bytes, more than the limit of %d (Config.MaxVirtualSize)", info.VirtualSize, cfg.MaxVirtualSize)
	}
	st.VirtualSize = info.VirtualSize
	need, err := measure(ctx, b, inputDisk, native.Format)
	if err != nil {
		return "", err
	}
	if err := checkFree(cfg.CacheDir, need); err != nil {
		return "", err
	}
	report(Progress{Phase: PhaseConvert, Total: info.VirtualSize})
	err = convert(ctx, b, inputDisk, native.Format, StagedDisk, info.VirtualSize, func(done, total int64) {
		report(Progress{Phase: PhaseConvert, Done: done, Total: total})
	})
	if err != nil {
		return "", err
	}
	report(Progress{Phase: PhaseConvert, Done: info.VirtualSize, Total: info.VirtualSize})
	if err := os.Remove(input); err != nil {
		return "", fmt.Errorf("staging: %w", err)
	}
	report(Progress{Phase: PhaseVerify})
	if err := check(ctx, b, StagedDisk); err != nil {
		return "", err
	}
	out := filepath.Join(b.dir, StagedDisk)
	fi, err := os.Lstat(out)
	if err != nil || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%w: qemu-img left no regular file", ErrCorrupt)
	}
	if err := b.take(out); err != nil {
		return "", err
	}
	if err := os.Chmod(out, 0o400); err != nil {
		return "", fmt.Errorf("staging: %w", err)
	}
	result, err := InspectFile(out, FormatQCOW2)
	if err != nil {
		return "", fmt.Errorf("the converted disk: %w", err)
	}
	if result.VirtualSize != info.VirtualSize {
		return "", fmt.Errorf("%w: the converted disk has %d bytes of virtual size, the source %d", ErrCorrupt, result.VirtualSize, info.VirtualSize)
	}
	return out, nil
}

// checkFree refuses, wrapping syscall.ENOSPC, when the file system of dir
// has less than need bytes free for an unprivileged writer.
func checkFree(dir string, need int64) error {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	free := int64(fs.Bavail) * fs.Bsize
	if fs.Bavail > math.MaxInt64/uint64(max(fs.Bsize, 1)) {
		free = math.MaxInt64
	}
	if need > free {
		return fmt.Errorf("%w: converting the disk needs %d bytes but the cache's file system (%s) has %d free", syscall.ENOSPC, need, dir, free)
	}
	return nil
}

// capReader fails once more than max bytes were read.
type capReader struct {
	r        io.Reader
	n, limit int64
}

func (c *capReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.limit {
		return n, tooLarge("the decompressed disk is larger than the limit of %d bytes (Config.MaxDiskSize)", c.limit)
	}
	return n, err
}

// writeSparse copies r to f, skipping runs of zeros (seeking over them) so
// a raw image's empty space takes no room, and returns the bytes copied.
func writeSparse(f *os.File, r io.Reader) (int64, error) {
	const block = 64 << 10
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, err := fill(r, buf)
		for i := 0; i < n; i += block {
			b := buf[i:min(i+block, n)]
			if !allZero(b) {
				if _, werr := f.WriteAt(b, off); werr != nil {
					return off, fmt.Errorf("staging: %w", werr)
				}
			}
			off += int64(len(b))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return off, err
		}
	}
	if err := f.Truncate(off); err != nil {
		return off, fmt.Errorf("staging: %w", err)
	}
	return off, nil
}

// fill reads into buf until it is full or r ends. Unlike io.ReadFull it
// returns io.EOF for a clean end after a partial buffer and passes every
// other error on as it is (a tar member cut short is io.ErrUnexpectedEOF
// and must not pass for its end).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// progressReader reports bytes read, at most once per MiB.
type progressReader struct {
	r        io.Reader
	phase    string
	done     int64
	total    int64
	reported int64
	report   func(Progress)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	if p.done-p.reported >= 1<<20 {
		p.reported = p.done
		p.report(Progress{Phase: p.phase, Done: p.done, Total: max(p.total, 0)})
	}
	return n, err
}

func (p *progressReader) finish() {
	p.report(Progress{Phase: p.phase, Done: p.done, Total: max(p.total, p.done)})
}

// findMeta returns the explicit metadata, else the STEM.meta sidecar's,
// else nil.
func findMeta(ctx context.Context, cfg Config, src Source, explicit *spec.Image) (*spec.Image, error) {
	if explicit != nil {
		return explicit, nil
	}
	side := src.Sibling(Stem(src.Name()) + ".meta")
	if side.String() == src.String() {
		return nil, nil
	}
	data, found, err := fetchSidecar(ctx, cfg, side)
	if err != nil || !found {
		return nil, err
	}
	im, err := ParseMeta(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", side, err)
	}
	cfg.Logger.Debug("metadata from sidecar", "meta", side.String())
	return &im, nil
}

// findSHA256 returns the expected digest and where it came from: the
// option, else NAME.sha256, STEM.sha256 or SHA256SUMS beside the source.
func findSHA256(ctx context.Context, cfg Config, src Source, explicit string) (string, string, error) {
	if explicit != "" {
		d, err := NormalizeSHA256(explicit)
		if err != nil {
			return "", "", fmt.Errorf("%w: --sha256: %w", ErrChecksum, err)
		}
		return d, "--sha256", nil
	}
	name := src.Name()
	candidates := []struct {
		file string
		bare bool
	}{{name + ".sha256", true}, {Stem(name) + ".sha256", false}, {"SHA256SUMS", false}}
	seen := map[string]bool{}
	for _, c := range candidates {
		if seen[c.file] {
			continue
		}
		seen[c.file] = true
		side := src.Sibling(c.file)
		data, found, err := fetchSidecar(ctx, cfg, side)
		if err != nil {
			return "", "", err
		}
		if !found {
			continue
		}
		if d, ok := findSum(data, name, c.bare); ok {
			return d, side.String(), nil
		}
		cfg.Logger.Debug("checksum file does not list the source", "file", side.String(), "source", name)
	}
	return "", "", nil
}
