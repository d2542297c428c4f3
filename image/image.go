// Package image turns a published disk image into an installable,
// verified, immutable qcow2: it fetches the source (http, https, file or a
// path) with HTTP Range resume and bounded retries, decompresses it while
// it streams (gzip, xz, zstd or bzip2, told apart by their magic bytes),
// unpacks Vagrant .box and .ova archives, checks the sha256 of what was
// fetched, converts the disk to qcow2 with qemu-img and checks the result.
//
// Prepare leaves the result in a staging directory; package model installs
// it under the state directory atomically.
package image

import (
	"errors"
	"log/slog"
	"net/http"
	"time"
)

// Errors callers can test for with errors.Is.
var (
	// ErrSource: the source cannot be fetched (bad URL, 404, refused
	// connection, truncated download).
	ErrSource = errors.New("cannot fetch the image")
	// ErrChecksum: what was fetched does not have the expected sha256.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrNotDiskImage: the content is not a disk image vmfest can read.
	ErrNotDiskImage = errors.New("not a disk image")
	// ErrCorrupt: the compressed stream, the archive or the disk is damaged.
	ErrCorrupt = errors.New("corrupt image")
	// ErrMeta: the image metadata cannot be read.
	ErrMeta = errors.New("bad image metadata")
)

// Progress reports how far a phase has got.
type Progress struct {
	// Phase is download, convert, verify or install.
	Phase string
	// Done and Total count bytes; Total is 0 when unknown.
	Done, Total int64
}

// The phases reported through Progress.
const (
	PhaseDownload = "download"
	PhaseConvert  = "convert"
	PhaseVerify   = "verify"
	PhaseInstall  = "install"
)

// Config is what Prepare needs from its caller. The zero value is not
// usable: CacheDir is required.
type Config struct {
	// CacheDir holds partial downloads (<key>.part, locked while in use)
	// and staging directories (.work-*). It must be on the same file
	// system as the registry so that installing is a rename.
	CacheDir string
	// QEMUImg is the qemu-img binary; default qemu-img.
	QEMUImg string
	// Client fetches http and https sources; default a client with
	// connect and response-header timeouts (the body is bounded by ctx).
	Client *http.Client
	// Attempts bounds the tries of each request, the first one included;
	// default 4. Only transient failures (connection reset, truncated
	// body, 5xx, 408, 429) are retried.
	Attempts int
	// Backoff is the wait before the first retry, doubled on each next
	// one; default 500ms.
	Backoff time.Duration
	// StallTimeout bounds how long a download may receive nothing before
	// it is broken off and resumed; default 60s.
	StallTimeout time.Duration
	// Logger receives debug messages; default slog.Default().
	Logger *slog.Logger
	// MaxSidecar bounds the size of a metadata or checksum file beside
	// the source (.meta, .sha256, SHA256SUMS); a larger one is refused,
	// not cut short. Default DefaultMaxSidecar.
	MaxSidecar int64
	// MaxDownload bounds the bytes fetched for one remote source, as they
	// stream; a server that sends more (or more than its Content-Length)
	// is cut off with an error. Default DefaultMaxDownload.
	MaxDownload int64
	// Bwrap is the bubblewrap binary that confines every qemu-img run on
	// an untrusted image; default bwrap (found on PATH). Without it
	// Prepare fails closed.
	Bwrap string
	// BoxUID and BoxGID are the unprivileged identity boxed qemu-img runs
	// as when vmfest runs as root; default DefaultBoxUID, DefaultBoxGID.
	BoxUID, BoxGID int
	// MaxDiskSize bounds the decompressed disk (the bytes unpacked before
	// conversion); a larger one is refused. Default DefaultMaxDiskSize.
	MaxDiskSize int64
	// MaxVirtualSize bounds the disk's size as the guest sees it; a larger
	// one is refused. Default DefaultMaxVirtualSize.
	MaxVirtualSize int64

	// policy is the fetch policy of the Prepare in progress (Options.Policy).
	policy FetchPolicy
}

// Defaults of Config's caps.
const (
	DefaultMaxSidecar  = 64 << 10
	DefaultMaxDownload = 32 << 30
	// DefaultMaxDiskSize is twice the largest download: a compressed
	// cloud image rarely unpacks to more than twice its size in data.
	DefaultMaxDiskSize = 64 << 30
	// DefaultMaxVirtualSize is above every common cloud image (2-40 GiB);
	// a larger disk is a deliberate choice and can be allowed.
	DefaultMaxVirtualSize = 256 << 30
)

func (c Config) withDefaults() Config {
	if c.QEMUImg == "" {
		c.QEMUImg = "qemu-img"
	}
	if c.Client == nil {
		c.Client = &http.Client{Transport: defaultTransport()}
	}
	if c.Attempts <= 0 {
		c.Attempts = 4
	}
	if c.Backoff <= 0 {
		c.Backoff = 500 * time.Millisecond
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxSidecar <= 0 {
		c.MaxSidecar = DefaultMaxSidecar
	}
	if c.MaxDownload <= 0 {
		c.MaxDownload = DefaultMaxDownload
	}
	if c.BoxUID <= 0 {
		c.BoxUID = DefaultBoxUID
	}
	if c.BoxGID <= 0 {
		c.BoxGID = DefaultBoxGID
	}
	if c.MaxDiskSize <= 0 {
		c.MaxDiskSize = DefaultMaxDiskSize
	}
	if c.MaxVirtualSize <= 0 {
		c.MaxVirtualSize = DefaultMaxVirtualSize
	}
	return c
}

func defaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = 60 * time.Second
	// Compressed images must arrive byte for byte as published: never let
	// the transport negotiate and undo a Content-Encoding.
	t.DisableCompression = true
	return t
}
