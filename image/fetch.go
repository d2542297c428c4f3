package image

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest/store"
)

// lockFile opens (creating it) and takes the exclusive flock of the file at
// path, waiting until it is free or ctx is done. The holder may remove the
// file before unlocking: a waiter that then gets the lock of the unlinked
// file notices (the path no longer names it) and tries again, so the
// file at path and the lock always go together.
func lockFile(ctx context.Context, path string) (*os.File, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if err := store.Flock(ctx, f, unix.LOCK_EX); err != nil {
			f.Close()
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return nil, fmt.Errorf("wait for another setup of the same source: %w", err)
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		var held, now unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &held); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if err := unix.Stat(path, &now); err == nil && now.Ino == held.Ino && now.Dev == held.Dev {
			return f, nil
		}
		f.Close() // removed or replaced while we waited: take the new one
	}
}

// fetchError is a failed request, classified for retrying.
type fetchError struct {
	err       error
	transient bool
	notFound  bool
}

func (e *fetchError) Error() string { return e.err.Error() }
func (e *fetchError) Unwrap() error { return e.err }

// classify words a transport error for the user and says whether a retry
// may help.
func classify(u string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	switch {
	case errors.Is(err, ErrBlocked):
		return &fetchError{err: fmt.Errorf("%w: %s: %w", ErrSource, u, err)}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &fetchError{err: fmt.Errorf("%w: %s: connection refused: is the server up and the port right?", ErrSource, u)}
	case isDNSError(err):
		return &fetchError{err: fmt.Errorf("%w: %s: %v: check the host name", ErrSource, u, err)}
	case isCertificateError(err):
		return &fetchError{err: fmt.Errorf("%w: %s: %v", ErrSource, u, err)}
	}
	return &fetchError{err: fmt.Errorf("%w: %s: %w", ErrSource, u, err), transient: true}
}

func isCertificateError(err error) bool {
	var v *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var h x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &v) || errors.As(err, &ua) || errors.As(err, &h) || errors.As(err, &ci)
}

func isDNSError(err error) bool {
	var d *net.DNSError
	return errors.As(err, &d) && !d.IsTemporary
}

// statusError words an HTTP status. It names the status by its code and
// Go's text for it, never by the reason phrase the server sent.
func statusError(u string, resp *http.Response) error {
	code := resp.StatusCode
	status := strconv.Itoa(code)
	if text := http.StatusText(code); text != "" {
		status += " " + text
	}
	var err error
	switch {
	case code == http.StatusNotFound || code == http.StatusGone:
		err = fmt.Errorf("%w: %s: %s: no such file on the server; check the URL", ErrSource, u, status)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		err = fmt.Errorf("%w: %s: %s: the server refuses access", ErrSource, u, status)
	default:
		err = fmt.Errorf("%w: %s: HTTP status %s", ErrSource, u, status)
	}
	transient := code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests
	notFound := code == http.StatusNotFound || code == http.StatusGone
	return &fetchError{err: err, transient: transient, notFound: notFound}
}

// retry runs op up to cfg.Attempts times while it fails transiently,
// waiting cfg.Backoff (doubling) between tries.
func retry(ctx context.Context, cfg Config, what string, op func() error) error {
	wait := cfg.Backoff
	var err error
	for attempt := 1; ; attempt++ {
		err = op()
		var fe *fetchError
		if err == nil || !errors.As(err, &fe) || !fe.transient {
			return err
		}
		if attempt >= cfg.Attempts {
			return fmt.Errorf("%w (gave up after %d attempts)", err, attempt)
		}
		cfg.Logger.Debug("retrying", "what", what, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// get issues one GET of u from offset (a Range request when offset > 0).
// It returns the body, the offset the body starts at (0 when the server
// ignored the range) and the total size (-1 when unknown).
func get(ctx context.Context, cfg Config, u string, offset int64) (io.ReadCloser, int64, int64, error) {
	// Each request has its own context, cancelled when its body stalls.
	reqCtx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return nil, 0, 0, &fetchError{err: fmt.Errorf("%w: %s: %v", ErrSource, u, err)}
	}
	req.Header.Set("User-Agent", "vmfest")
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := cfg.Client.Do(req)
	if err != nil {
		cancel()
		return nil, 0, 0, classify(u, err)
	}
	body := newStallBody(resp.Body, cfg.StallTimeout, cancel)
	resp.Body = body
	switch {
	case resp.StatusCode == http.StatusOK:
		return body, 0, resp.ContentLength, nil
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != offset {
			resp.Body.Close()
			return nil, 0, 0, &fetchError{err: fmt.Errorf("%w: %s: the server answered a resume at byte %d with a Content-Range that does not start there", ErrSource, u, offset)}
		}
		return body, start, total, nil
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0:
		// The partial file is as long as the file or longer: it changed.
		// Start over.
		resp.Body.Close()
		return get(ctx, cfg, u, 0)
	}
	resp.Body.Close()
	return nil, 0, 0, statusError(u, resp)
}

// stallBody is a response body whose reads are bounded: a read that gets
// nothing for the stall timeout cancels the request, so the read fails and
// the download resumes with a new request instead of hanging.
type stallBody struct {
	body    io.ReadCloser
	timeout time.Duration
	timer   *time.Timer
	cancel  context.CancelFunc
	stalled atomic.Bool
}

func newStallBody(body io.ReadCloser, timeout time.Duration, cancel context.CancelFunc) *stallBody {
	b := &stallBody{body: body, timeout: timeout, cancel: cancel}
	b.timer = time.AfterFunc(timeout, func() {
		b.stalled.Store(true)
		cancel()
	})
	b.timer.Stop()
	return b
}

func (b *stallBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.timeout)
	n, err := b.body.Read(p)
	b.timer.Stop()
	if err != nil && b.stalled.Load() {
		err = fmt.Errorf("no data for %s: %w", b.timeout, errStalled)
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.timer.Stop()
	err := b.body.Close()
	b.cancel()
	return err
}

var errStalled = errors.New("the download stalled")

// parseContentRange reads "bytes START-END/TOTAL" (TOTAL may be *).
func parseContentRange(h string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(h, "bytes ")
	if !found {
		return 0, 0, false
	}
	span, size, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	first, _, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	total = -1
	if size != "*" {
		if total, err = strconv.ParseInt(size, 10, 64); err != nil {
			return 0, 0, false
		}
	}
	return start, total, true
}

// remoteReader reads an http source from an offset to its end. When the
// body breaks off (connection reset, fewer bytes than announced), it asks
// for the rest with a Range request, up to cfg.Attempts times in a row, so
// its reader sees one whole stream.
type remoteReader struct {
	ctx   context.Context
	cfg   Config
	url   string
	off   int64 // bytes of the file delivered so far (including the cache's)
	total int64 // -1 when unknown
	body  io.ReadCloser
}

// openRemote starts reading u at offset. It returns the reader and the
// offset it actually starts at: 0 when the server ignores ranges.
func openRemote(ctx context.Context, cfg Config, u string, offset int64) (*remoteReader, int64, error) {
	r := &remoteReader{ctx: ctx, cfg: cfg, url: u}
	err := retry(ctx, cfg, u, func() error {
		body, start, total, err := get(ctx, cfg, u, offset)
		if err != nil {
			return err
		}
		r.body, r.off, r.total = body, start, total
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if r.total > cfg.MaxDownload {
		r.body.Close()
		return nil, 0, downloadTooLarge(u, cfg.MaxDownload, fmt.Sprintf("the server announces %d bytes", r.total))
	}
	return r, r.off, nil
}

// ErrDownloadTooLarge: a remote source is larger than Config.MaxDownload.
var ErrDownloadTooLarge = errors.New("download too large")

func downloadTooLarge(u string, limit int64, what string) error {
	return fmt.Errorf("%w: %s: %s, more than the limit of %d bytes (Config.MaxDownload); nothing was installed", ErrDownloadTooLarge, u, what, limit)
}

func (r *remoteReader) Read(p []byte) (int, error) {
	for attempt := 1; ; attempt++ {
		n, err := r.body.Read(p)
		r.off += int64(n)
		switch {
		case r.total >= 0 && r.off > r.total:
			return 0, fmt.Errorf("%w: %s: the server sent more than the %d bytes it announced; the download was cut off", ErrCorrupt, r.url, r.total)
		case r.off > r.cfg.MaxDownload:
			return 0, downloadTooLarge(r.url, r.cfg.MaxDownload, "the server sent more")
		}
		if err == nil || n > 0 {
			if err == io.EOF && r.total >= 0 && r.off < r.total {
				err = nil // handled on the next call, once n bytes are passed on
			}
			if err == io.EOF {
				return n, io.EOF
			}
			return n, nil
		}
		if err == io.EOF && (r.total < 0 || r.off >= r.total) {
			return 0, io.EOF
		}
		if r.ctx.Err() != nil {
			return 0, fmt.Errorf("download interrupted at byte %d: %w", r.off, r.ctx.Err())
		}
		// The body broke off early or stalled: resume from r.off.
		cause := err
		if err == io.EOF {
			cause = io.ErrUnexpectedEOF
		}
		r.body.Close()
		if attempt >= r.cfg.Attempts {
			return 0, fmt.Errorf("%w: %s: the download broke off at byte %d of %s and did not resume after %d attempts: %v", ErrSource, r.url, r.off, sizeText(r.total), attempt, cause)
		}
		r.cfg.Logger.Debug("download broke off; resuming", "url", r.url, "at", r.off, "err", cause)
		select {
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		case <-time.After(r.cfg.Backoff << (attempt - 1)):
		}
		var start int64
		err = retry(r.ctx, r.cfg, r.url, func() error {
			body, s, total, err := get(r.ctx, r.cfg, r.url, r.off)
			if err != nil {
				return err
			}
			r.body, start = body, s
			if total >= 0 {
				r.total = total
			}
			if r.total > r.cfg.MaxDownload {
				body.Close()
				return downloadTooLarge(r.url, r.cfg.MaxDownload, fmt.Sprintf("the server announces %d bytes", r.total))
			}
			return nil
		})
		if err != nil {
			r.body = io.NopCloser(strings.NewReader(""))
			return 0, err
		}
		if start != r.off {
			r.body.Close()
			r.body = io.NopCloser(strings.NewReader(""))
			return 0, fmt.Errorf("%w: %s: the download broke off at byte %d and the server cannot resume it (no Range support)", ErrSource, r.url, r.off)
		}
	}
}

func (r *remoteReader) Close() error { return r.body.Close() }

func sizeText(n int64) string {
	if n < 0 {
		return "an unknown size"
	}
	return strconv.FormatInt(n, 10)
}

// fetchSidecar reads a small file beside the source, at most
// cfg.MaxSidecar bytes (a larger one is refused, not cut short). found is
// false when it does not exist (404, no such file); other failures are
// errors. A local sidecar is opened without following a symbolic link
// (a link could lead out of the directories a caller may read) and must
// be a regular file.
func fetchSidecar(ctx context.Context, cfg Config, src Source) (data []byte, found bool, err error) {
	limit := cfg.MaxSidecar
	tooLarge := func(what string) error {
		return fmt.Errorf("%w: %s: %s, more than the limit of %d bytes for a metadata or checksum file (Config.MaxSidecar)", ErrMeta, src, what, limit)
	}
	if !src.Remote() {
		f, err := os.OpenFile(src.Path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return nil, false, nil
		case errors.Is(err, unix.ELOOP):
			return nil, false, fmt.Errorf("%w: %s: a symbolic link; a metadata or checksum file beside a local source must be a regular file in the same directory", ErrMeta, src.Path)
		case err != nil:
			return nil, false, fmt.Errorf("%w: %s: %v", ErrSource, src.Path, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return nil, false, fmt.Errorf("%w: %s: %v", ErrSource, src.Path, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, false, fmt.Errorf("%w: %s: not a regular file (%s)", ErrMeta, src.Path, fi.Mode().Type())
		}
		if fi.Size() > limit {
			return nil, false, tooLarge(fmt.Sprintf("%d bytes", fi.Size()))
		}
		data, err = io.ReadAll(io.LimitReader(f, limit+1))
		if err != nil {
			return nil, false, fmt.Errorf("%w: %s: %v", ErrSource, src.Path, err)
		}
	} else {
		u := src.String()
		err = retry(ctx, cfg, u, func() error {
			body, _, total, err := get(ctx, cfg, u, 0)
			if err != nil {
				return err
			}
			defer body.Close()
			if total > limit {
				return tooLarge(fmt.Sprintf("the server announces %d bytes", total))
			}
			data, err = io.ReadAll(io.LimitReader(body, limit+1))
			if err != nil {
				return classify(u, err)
			}
			return nil
		})
		var fe *fetchError
		if errors.As(err, &fe) && fe.notFound {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
	}
	if int64(len(data)) > limit {
		return nil, false, tooLarge("larger")
	}
	return data, true, nil
}

// maxSidecar bounds a metadata member read whole from inside an archive
// (a .box's metadata.json; 16 times that for an .ovf).
const maxSidecar = 1 << 20
