package vmfest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/vmfest/vmfest/api/wire"
)

// filesPath is the copy endpoint of a remote machine for guest path p.
func (m *remoteMachine) filesPath(ctx context.Context, p string, opts CopyOptions) string {
	q := url.Values{"path": {p}}
	if opts.Via != "" {
		q.Set("via", opts.Via)
	}
	if _, ok := ctx.Deadline(); ok {
		q.Set("timeout", remaining(ctx, 0))
	}
	return m.path("/files?" + q.Encode())
}

// CopyIn implements Machine: the tar streams to the server in the request
// body (PUT /v1/machines/{name}/files), never held whole.
func (m *remoteMachine) CopyIn(ctx context.Context, dst string, r io.Reader, opts CopyOptions) error {
	if err := checkVia(opts.Via); err != nil {
		return err
	}
	resp, err := m.r.stream(ctx, http.MethodPut, m.filesPath(ctx, dst, opts), io.NopCloser(r))
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return nil
}

// CopyOut implements Machine: the tar streams from the server
// (GET /v1/machines/{name}/files); a failure the server meets after the
// stream began comes in a trailer and is the error of the last Read.
func (m *remoteMachine) CopyOut(ctx context.Context, src string, opts CopyOptions) (io.ReadCloser, error) {
	if err := checkVia(opts.Via); err != nil {
		return nil, err
	}
	resp, err := m.r.stream(ctx, http.MethodGet, m.filesPath(ctx, src, opts), nil)
	if err != nil {
		return nil, err
	}
	return &trailerReader{resp: resp}, nil
}

// trailerReader reads a copy's stream and, at its end, the error trailer.
type trailerReader struct {
	resp *http.Response
}

func (t *trailerReader) Read(p []byte) (int, error) {
	n, err := t.resp.Body.Read(p)
	if errors.Is(err, io.EOF) {
		if v := t.resp.Trailer.Get(wire.CopyErrorTrailer); v != "" {
			var we wire.Error
			if json.Unmarshal([]byte(v), &we) != nil || we.Code == "" {
				return n, fmt.Errorf("the server's copy failed: %s", v)
			}
			return n, errorFrom(we)
		}
	}
	return n, err
}

func (t *trailerReader) Close() error { return t.resp.Body.Close() }

// stream sends a request whose body (a tar, when not nil) streams as is,
// and returns the answer when it is a success; else the server's error,
// as request does.
func (r *Remote) stream(ctx context.Context, method, path string, body io.ReadCloser) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", wire.TarType)
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("vmfest server %s: %w", r.display, ctx.Err())
		}
		return nil, fmt.Errorf("vmfest server %s: %w", r.display, err)
	}
	if resp.StatusCode < 400 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var we wire.Error
	if err := json.Unmarshal(data, &we); err != nil || we.Code == "" {
		return nil, fmt.Errorf("vmfest server %s: %s %s: %s: %s", r.display, method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	return nil, errorFrom(we)
}
