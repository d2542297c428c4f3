package vmfest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/store"
)

// Remote is a Server on another process or host: the HTTP client of
// `vmfest serve` (package api). Its methods behave like Local's and return
// the same errors (errors.Is(err, ErrNotFound) and so on; a refused state
// is a *StateError); an authentication failure wraps fs.ErrPermission.
// It is safe for concurrent use.
type Remote struct {
	base    string // scheme://host, with no path
	display string // the URL as given, for messages
	unix    bool
	token   string
	client  *http.Client
}

var (
	_ Server  = (*Remote)(nil)
	_ Machine = (*remoteMachine)(nil)
)

// ConnectOption tunes Connect.
type ConnectOption func(*connectConfig)

type connectConfig struct {
	token  string
	tls    *tls.Config
	client *http.Client
}

// WithToken sends token as "Authorization: Bearer" on every request (TCP
// servers require it; a Unix socket server ignores it).
func WithToken(token string) ConnectOption {
	return func(c *connectConfig) { c.token = token }
}

// WithTLSConfig sets the TLS configuration of an https:// server (a
// private CA, a client certificate).
func WithTLSConfig(cfg *tls.Config) ConnectOption {
	return func(c *connectConfig) { c.tls = cfg }
}

// WithHTTPClient replaces the HTTP client (its transport must reach the
// server); WithTLSConfig is then ignored.
func WithHTTPClient(hc *http.Client) ConnectOption {
	return func(c *connectConfig) { c.client = hc }
}

// DefaultServerPort is the port of an http(s) server URL that names none
// (`vmfest serve --listen`'s default, VirtualBox's web service port).
const DefaultServerPort = 18083

// Connect returns a Server backed by the vmfest server at rawURL:
// unix:///path/to/vmfest.sock, http://host[:port] or https://host[:port]
// (port 18083 when not given). It does not contact the server: the first
// call does.
func Connect(rawURL string, opts ...ConnectOption) (*Remote, error) {
	var cfg connectConfig
	for _, o := range opts {
		o(&cfg)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w: server URL %q: %w", ErrInvalid, rawURL, err)
	}
	r := &Remote{display: rawURL, token: cfg.token}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 32
	switch u.Scheme {
	case "unix":
		path := u.Path
		if u.Host != "" || path == "" {
			return nil, fmt.Errorf("%w: server URL %q: write a socket as unix:///absolute/path", ErrInvalid, rawURL)
		}
		r.base, r.unix = "http://vmfest", true
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	case "http", "https":
		if u.Host == "" {
			return nil, fmt.Errorf("%w: server URL %q: no host", ErrInvalid, rawURL)
		}
		if u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("%w: server URL %q: give no path (the API is under %s)", ErrInvalid, rawURL, wire.Prefix)
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), strconv.Itoa(DefaultServerPort))
		}
		r.base = u.Scheme + "://" + host
		if cfg.tls != nil {
			tr.TLSClientConfig = cfg.tls
		}
	default:
		return nil, fmt.Errorf("%w: server URL %q: use unix:///path, http://host:port or https://host:port", ErrInvalid, rawURL)
	}
	r.client = cfg.client
	if r.client == nil {
		r.client = &http.Client{Transport: tr}
	}
	return r, nil
}

// URL is the server's URL as given to Connect.
func (r *Remote) URL() string { return r.display }

// Close releases idle connections. The Remote stays usable.
func (r *Remote) Close() error {
	r.client.CloseIdleConnections()
	return nil
}

// remoteError is an error reported by the server: its message, and the
// vmfest error it stands for.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// errorFrom rebuilds the error a server reported.
func errorFrom(we wire.Error) error {
	if we.Code == wire.CodeWrongState && we.Machine != "" && we.State != "" {
		se := &StateError{Machine: we.Machine, Op: we.Op, State: State(we.State)}
		for _, n := range we.Needs {
			se.Needs = append(se.Needs, State(n))
		}
		return se
	}
	kinds := map[string]error{
		wire.CodeInvalid:      ErrInvalid,
		wire.CodeTooLarge:     ErrInvalid,
		wire.CodeNotFound:     ErrNotFound,
		wire.CodeExists:       ErrExists,
		wire.CodeWrongState:   ErrWrongState,
		wire.CodeTimeout:      ErrTimeout,
		wire.CodeCanceled:     context.Canceled,
		wire.CodeUnsupported:  errors.ErrUnsupported,
		wire.CodeUnauthorized: fs.ErrPermission,
		wire.CodeForbidden:    fs.ErrPermission,
		wire.CodeUnavailable:  ErrUnavailable,
	}
	msg := we.Error
	if msg == "" {
		msg = "the server reported an error (code " + we.Code + ")"
	}
	return &remoteError{msg: msg, kind: kinds[we.Code]}
}

// request sends one request and returns the response when its status is
// below 400; otherwise the server's error.
func (r *Remote) request(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode the request: %w", err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("vmfest server %s: %w", r.display, ctx.Err())
		}
		hint := ""
		if r.unix && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED)) {
			hint = " (is `vmfest serve` running?)"
		}
		return nil, fmt.Errorf("vmfest server %s: %w%s", r.display, err, hint)
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

// call sends a request and decodes a JSON answer into out (when not nil).
func (r *Remote) call(ctx context.Context, method, path string, body, out any) error {
	resp, err := r.request(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("vmfest server %s: %s %s: bad answer: %w", r.display, method, path, err)
	}
	// Read to the end (the newline after the value), so the connection is
	// reused rather than closed: with TLS that saves a handshake a call.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	return nil
}

// opGrace is how long past its own deadline a caller waits for the
// server's verdict on an operation bounded by that deadline.
const opGrace = 5 * time.Second

// operation starts long work (the server answers 202 with an operation)
// and waits for its end, reporting progress. When ctx is canceled the
// operation is canceled on the server too; when ctx's deadline passes the
// server's verdict (bounded by the same deadline) is awaited a little
// longer, so a timeout reads as the server's ErrTimeout.
func (r *Remote) operation(ctx context.Context, path string, body any, progress func(Progress)) (wire.Operation, error) {
	var op wire.Operation
	if err := r.call(ctx, http.MethodPost, path, body, &op); err != nil {
		return op, err
	}
	waitCtx := context.WithoutCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithDeadline(waitCtx, dl.Add(opGrace))
		defer cancel()
	}
	var last *wire.Progress
	for !op.Done() {
		if ctx.Err() != nil && (!errors.Is(ctx.Err(), context.DeadlineExceeded) || waitCtx.Err() != nil) {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			r.call(cctx, http.MethodDelete, wire.Prefix+"/operations/"+op.ID, nil, nil)
			cancel()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return op, fmt.Errorf("%s: %w: %w", op.Kind, ErrTimeout, ctx.Err())
			}
			return op, fmt.Errorf("%s: %w", op.Kind, ctx.Err())
		}
		q := "?timeout=30s"
		if progress != nil {
			q += "&progress=true"
		}
		rctx, cancel := context.WithCancel(waitCtx)
		stop := context.AfterFunc(ctx, func() {
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				cancel()
			}
		})
		err := r.call(rctx, http.MethodGet, wire.Prefix+"/operations/"+op.ID+"/wait"+q, nil, &op)
		stop()
		cancel()
		if err != nil && ctx.Err() == nil && waitCtx.Err() == nil {
			return op, err
		}
		if progress != nil && op.Progress != nil && (last == nil || *last != *op.Progress) {
			p := *op.Progress
			last = &p
			progress(Progress(p))
		}
	}
	if op.Status == wire.Succeeded {
		return op, nil
	}
	if op.Error == nil {
		return op, fmt.Errorf("%s: %s", op.Kind, op.Status)
	}
	return op, errorFrom(*op.Error)
}

// remaining is the query value for the time left before ctx's deadline,
// or def when it has none.
func remaining(ctx context.Context, def time.Duration) string {
	d := def
	if dl, ok := ctx.Deadline(); ok {
		d = max(time.Until(dl), time.Millisecond)
	}
	return url.QueryEscape(d.Round(time.Millisecond).String())
}

func checkName(kind, name string) error {
	if err := store.ValidateName(kind, name); err != nil {
		return apiError(err)
	}
	return nil
}
