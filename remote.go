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
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
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

// Instance implements Server. Disk paths in an image spec are paths on the
// server; over a Unix socket (the same host) a relative one is made
// absolute here first.
func (r *Remote) Instance(ctx context.Context, name string, image Image, hardware Hardware) (Machine, error) {
	if err := checkName("machine", name); err != nil {
		return nil, err
	}
	req := wire.CreateMachine{
		Name:     name,
		Image:    wire.ImageChoice{Model: image.Model, Spec: image.Spec},
		Hardware: wire.HardwareChoice{Model: hardware.Model, Spec: hardware.Spec},
	}
	if image.Spec != nil && r.unix && image.Spec.Location != "" && !filepath.IsAbs(image.Spec.Location) {
		im := *image.Spec
		if abs, err := filepath.Abs(im.Location); err == nil {
			im.Location = abs
		}
		req.Image.Spec = &im
	}
	var info Info
	if err := r.call(ctx, http.MethodPost, wire.Prefix+"/machines", req, &info); err != nil {
		return nil, err
	}
	return &remoteMachine{r: r, name: name}, nil
}

// FindMachine implements Server.
func (r *Remote) FindMachine(ctx context.Context, name string) (Machine, error) {
	if err := checkName("machine", name); err != nil {
		return nil, err
	}
	m := &remoteMachine{r: r, name: name}
	if _, err := m.State(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// Machines implements Server.
func (r *Remote) Machines(ctx context.Context) ([]Machine, error) {
	var items []struct {
		Name string `json:"name"`
	}
	if err := r.call(ctx, http.MethodGet, wire.Prefix+"/machines?fields=name", nil, &items); err != nil {
		return nil, err
	}
	out := make([]Machine, len(items))
	for i, it := range items {
		out[i] = &remoteMachine{r: r, name: it.Name}
	}
	return out, nil
}

// HardwareModels implements Server.
func (r *Remote) HardwareModels(ctx context.Context) ([]string, error) {
	var names []string
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/hardware", nil, &names)
	return names, err
}

// HardwareModel implements Server.
func (r *Remote) HardwareModel(ctx context.Context, name string) (spec.Hardware, error) {
	if err := checkName("hardware model", name); err != nil {
		return spec.Hardware{}, err
	}
	var h spec.Hardware
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/hardware/"+name, nil, &h)
	return h, err
}

// AddHardwareModel implements Server.
func (r *Remote) AddHardwareModel(ctx context.Context, name string, h spec.Hardware) error {
	if err := checkName("hardware model", name); err != nil {
		return err
	}
	return r.call(ctx, http.MethodPut, wire.Prefix+"/hardware/"+name, h, nil)
}

// RemoveHardwareModel implements Server.
func (r *Remote) RemoveHardwareModel(ctx context.Context, name string) error {
	if err := checkName("hardware model", name); err != nil {
		return err
	}
	return r.call(ctx, http.MethodDelete, wire.Prefix+"/hardware/"+name, nil, nil)
}

// SetupModel implements Server: the server fetches source (an http(s) URL,
// or a path on the server inside its allowed directories) as an operation,
// and opts.Progress receives the operation's progress.
func (r *Remote) SetupModel(ctx context.Context, source string, opts SetupOptions) (model.ImageModel, error) {
	req := wire.SetupModel{Source: source, ID: opts.ID, SHA256: opts.SHA256, Meta: opts.Meta, Overrides: opts.Overrides, Replace: opts.Replace}
	if r.unix && !strings.Contains(source, "://") && !filepath.IsAbs(source) {
		if abs, err := filepath.Abs(source); err == nil {
			req.Source = abs
		}
	}
	op, err := r.operation(ctx, wire.Prefix+"/models", req, opts.Progress)
	if err != nil {
		return model.ImageModel{}, err
	}
	var m model.ImageModel
	if err := json.Unmarshal(op.Result, &m); err != nil {
		return model.ImageModel{}, fmt.Errorf("setup-model: bad result from the server: %w", err)
	}
	return m, nil
}

// Models implements Server.
func (r *Remote) Models(ctx context.Context) ([]model.ImageModel, error) {
	var ms []model.ImageModel
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/models", nil, &ms)
	return ms, err
}

// Model implements Server.
func (r *Remote) Model(ctx context.Context, id string) (model.ImageModel, error) {
	if err := checkName("image model", id); err != nil {
		return model.ImageModel{}, err
	}
	var m model.ImageModel
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/models/"+id, nil, &m)
	return m, err
}

// RemoveModel implements Server.
func (r *Remote) RemoveModel(ctx context.Context, id string) error {
	if err := checkName("image model", id); err != nil {
		return err
	}
	return r.call(ctx, http.MethodDelete, wire.Prefix+"/models/"+id, nil, nil)
}

// Networks implements Server.
func (r *Remote) Networks(ctx context.Context) ([]Network, error) {
	var ns []Network
	err := r.call(ctx, http.MethodGet, wire.Prefix+"/networks", nil, &ns)
	return ns, err
}

// CreateNetwork implements Server.
func (r *Remote) CreateNetwork(ctx context.Context, n NetworkSpec) (Network, error) {
	if err := checkName("network", n.Name); err != nil {
		return Network{}, err
	}
	var out Network
	err := r.call(ctx, http.MethodPost, wire.Prefix+"/networks", n, &out)
	return out, err
}

// RemoveNetwork implements Server.
func (r *Remote) RemoveNetwork(ctx context.Context, name string) error {
	if err := checkName("network", name); err != nil {
		return err
	}
	return r.call(ctx, http.MethodDelete, wire.Prefix+"/networks/"+name, nil, nil)
}

// remoteMachine is a handle on a machine of a Remote server: its name
// only, like Local's.
type remoteMachine struct {
	r    *Remote
	name string
}

func (m *remoteMachine) Name() string { return m.name }

func (m *remoteMachine) path(suffix string) string {
	return wire.Prefix + "/machines/" + m.name + suffix
}

func (m *remoteMachine) action(ctx context.Context, action string) error {
	return m.r.call(ctx, http.MethodPost, m.path("/"+action), nil, nil)
}

// Start implements Machine.
func (m *remoteMachine) Start(ctx context.Context) error { return m.action(ctx, "start") }

// Pause implements Machine.
func (m *remoteMachine) Pause(ctx context.Context) error { return m.action(ctx, "pause") }

// Resume implements Machine.
func (m *remoteMachine) Resume(ctx context.Context) error { return m.action(ctx, "resume") }

// PowerDown implements Machine.
func (m *remoteMachine) PowerDown(ctx context.Context) error { return m.action(ctx, "power-down") }

// Stop implements Machine: an operation on the server, bounded by ctx's
// deadline (DefaultStopTimeout when it has none).
func (m *remoteMachine) Stop(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultStopTimeout)
		defer cancel()
	}
	_, err := m.r.operation(ctx, m.path("/stop?timeout="+remaining(ctx, DefaultStopTimeout)), nil, nil)
	return err
}

// WaitReady implements Machine: an operation on the server, bounded by ctx.
func (m *remoteMachine) WaitReady(ctx context.Context) error {
	_, err := m.r.operation(ctx, m.path("/wait-ready?timeout="+remaining(ctx, time.Hour)), nil, nil)
	return err
}

// Destroy implements Machine.
func (m *remoteMachine) Destroy(ctx context.Context) error {
	return m.r.call(ctx, http.MethodDelete, m.path(""), nil, nil)
}

// State implements Machine.
func (m *remoteMachine) State(ctx context.Context) (State, error) {
	var st wire.State
	if err := m.r.call(ctx, http.MethodGet, m.path("/state"), nil, &st); err != nil {
		return "", err
	}
	return State(st.State), nil
}

// Info implements Machine.
func (m *remoteMachine) Info(ctx context.Context) (Info, error) {
	var info Info
	err := m.r.call(ctx, http.MethodGet, m.path(""), nil, &info)
	return info, err
}

// ConsoleLog implements Machine.
func (m *remoteMachine) ConsoleLog(ctx context.Context) ([]byte, error) {
	resp, err := m.r.request(ctx, http.MethodGet, m.path("/console"), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("console log of %s: %w", m.name, err)
	}
	return data, nil
}

// IP implements Machine: the server waits for the address until ctx's
// deadline (its default, DefaultIPTimeout for Local, when ctx has none).
func (m *remoteMachine) IP(ctx context.Context, slot int) (Address, error) {
	var a Address
	q := "/ip?slot=" + strconv.Itoa(slot)
	if _, ok := ctx.Deadline(); ok {
		q += "&wait=" + remaining(ctx, 0)
	}
	err := m.r.call(ctx, http.MethodGet, m.path(q), nil, &a)
	return a, err
}
