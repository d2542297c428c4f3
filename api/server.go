// Package api serves a vmfest.Server over HTTP: JSON under /v1, long work
// as operations, a server-sent-event stream, Prometheus metrics and an
// OpenAPI document. It only translates between HTTP and the Server
// interface, so the CLI and Go programs behave the same against a local or
// a remote host (their client is vmfest.Remote, from vmfest.Connect).
//
// Its security rules: every request on TCP carries a bearer token (see
// Token); a remote caller may name disk paths only inside the directories
// the operator allows (see Config.AllowPaths); names are validated before
// any path is built; bodies are size-limited; no input makes it panic.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/image"
	"github.com/vmfest/vmfest/store"
)

// Config configures a Server.
type Config struct {
	// Home is the state directory of the served Local server (default: the
	// served Server's Home(), when it has one); its image models directory
	// is always an allowed path, for immutable images.
	Home string
	// AllowPaths are further directories a remote caller may name disk
	// images and setup-model sources in.
	AllowPaths []string
	// FetchAllow are address prefixes a token holder's setup-model may
	// fetch from beside public addresses (loopback, link-local and private
	// ranges are refused to them by default). Callers on the Unix socket
	// are this host's user and are not restricted.
	FetchAllow []netip.Prefix
	// Logger receives request errors and panics; default slog.Default().
	Logger *slog.Logger
	// MaxWait caps the ?wait= and ?timeout= a caller may ask for; default
	// 1 hour.
	MaxWait time.Duration
	// KeepOperations is how long a finished operation stays readable;
	// default 15 minutes.
	KeepOperations time.Duration
	// MaxSetups caps the setup-model operations running at once (each
	// downloads, decompresses and converts an image); the next is refused
	// with 503 and Retry-After. Default DefaultMaxSetups.
	MaxSetups int
}

// DefaultMaxSetups is Config.MaxSetups when it is not set.
const DefaultMaxSetups = 2

// Server is the HTTP front of a vmfest.Server. Create it with New, serve
// its Handler (or use Serve), and Close it to cancel running operations.
type Server struct {
	srv     vmfest.Server
	cfg     Config
	log     *slog.Logger
	paths   *pathPolicy
	ops     *operations
	events  *broker
	metrics *metrics
	ctx     context.Context // the server's life: operations run under it
	cancel  context.CancelFunc
	mux     *http.ServeMux
	tunnels tunnelSet // open SSH tunnels (hijacked: Shutdown does not see them)
}

// New returns an HTTP server over srv. It reads the served state once (as
// every later request does: nothing is cached), so a restarted server picks
// up the machines that kept running.
func New(ctx context.Context, srv vmfest.Server, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if h, ok := srv.(interface{ Home() string }); ok && cfg.Home == "" {
		cfg.Home = h.Home() // a Local server: its models directory is allowed
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = time.Hour
	}
	if cfg.KeepOperations <= 0 {
		cfg.KeepOperations = 15 * time.Minute
	}
	switch {
	case cfg.MaxSetups < 0:
		return nil, fmt.Errorf("%w: max setups %d: give 1 or more (0 for the default %d)", vmfest.ErrInvalid, cfg.MaxSetups, DefaultMaxSetups)
	case cfg.MaxSetups == 0:
		cfg.MaxSetups = DefaultMaxSetups
	}
	paths, err := newPathPolicy(cfg.Home, cfg.AllowPaths)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Server{
		srv:     srv,
		cfg:     cfg,
		log:     cfg.Logger,
		paths:   paths,
		events:  newBroker(),
		metrics: newMetrics(),
		ctx:     sctx,
		cancel:  cancel,
	}
	s.ops = newOperations(cfg.KeepOperations, s.events, s.metrics)
	s.ops.limits[wire.OpSetupModel] = cfg.MaxSetups
	s.routes()
	ms, err := srv.Machines(ctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("read the machines: %w", err)
	}
	running := 0
	for _, m := range ms {
		if st, err := m.State(ctx); err == nil && st == vmfest.Running {
			running++
		}
	}
	s.log.Info("serving", "machines", len(ms), "running", running)
	return s, nil
}

// Close cancels running operations, ends event streams, and closes the
// open SSH tunnels and waits for them. It is safe to call more than once.
func (s *Server) Close() error {
	s.cancel()
	s.tunnels.closeAll()
	return nil
}

// Handler returns the API's handler, without authentication (Serve adds
// the token check on TCP listeners; see RequireToken). Its callers are
// treated as remote ones (token holders): their setup-model fetches pass
// the operator's fetch policy (Config.FetchAllow).
func (s *Server) Handler() http.Handler {
	return s.recoverer(s.mux)
}

// LocalHandler is Handler for this host's user: what Serve serves on its
// Unix socket (mode 0600, so only the socket's owner connects). Its
// callers' setup-model fetches are not restricted.
func (s *Server) LocalHandler() http.Handler {
	h := s.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), localCallerKey{}, true)))
	})
}

// localCallerKey marks, in a request's context, a caller that is this
// host's user (see LocalHandler).
type localCallerKey struct{}

// localCaller reports whether r came through LocalHandler.
func localCaller(r *http.Request) bool { return isLocal(r.Context()) }

// isLocal reports whether ctx is a request's that came through
// LocalHandler.
func isLocal(ctx context.Context) bool {
	v, _ := ctx.Value(localCallerKey{}).(bool)
	return v
}

// route is one endpoint: its method, its path pattern (http.ServeMux
// syntax) and its name in the metrics. The table is the API's surface; a
// test checks that api/openapi.json documents every entry.
type route struct {
	method, path, name string
	handler            func(s *Server) handlerFunc
}

var routeTable = []route{
	{"GET", "/v1/machines", "machines", func(s *Server) handlerFunc { return s.listMachines }},
	{"POST", "/v1/machines", "machines", func(s *Server) handlerFunc { return s.createMachine }},
	{"GET", "/v1/machines/{name}", "machine", func(s *Server) handlerFunc { return s.getMachine }},
	{"DELETE", "/v1/machines/{name}", "machine", func(s *Server) handlerFunc { return s.destroyMachine }},
	{"PATCH", "/v1/machines/{name}", "machine", func(s *Server) handlerFunc { return s.changeMachine }},
	{"GET", "/v1/machines/{name}/state", "machine-state", func(s *Server) handlerFunc { return s.machineState }},
	{"POST", "/v1/machines/{name}/{action}", "machine-action", func(s *Server) handlerFunc { return s.machineAction }},
	{"POST", "/v1/machines/{name}/save", "machine-save", func(s *Server) handlerFunc { return s.saveMachine }},
	{"POST", "/v1/machines/{name}/clone", "machine-clone", func(s *Server) handlerFunc { return s.cloneMachine }},
	{"POST", "/v1/machines/{name}/labels", "machine-labels", func(s *Server) handlerFunc { return s.relabelMachine }},
	{"POST", "/v1/machines/{name}/exec", "machine-exec", func(s *Server) handlerFunc { return s.execMachine }},
	{"PUT", "/v1/machines/{name}/files", "machine-files", func(s *Server) handlerFunc { return s.copyIn }},
	{"GET", "/v1/machines/{name}/files", "machine-files", func(s *Server) handlerFunc { return s.copyOut }},
	{"GET", "/v1/machines/{name}/ip", "machine-ip", func(s *Server) handlerFunc { return s.machineIP }},
	{"GET", "/v1/machines/{name}/console", "machine-console", func(s *Server) handlerFunc { return s.machineConsole }},
	{"GET", "/v1/machines/{name}/ssh", "machine-ssh", func(s *Server) handlerFunc { return s.tunnelSSH }},
	{"GET", "/v1/machines/{name}/snapshots", "machine-snapshots", func(s *Server) handlerFunc { return s.listSnapshots }},
	{"POST", "/v1/machines/{name}/snapshots", "machine-snapshots", func(s *Server) handlerFunc { return s.takeSnapshot }},
	{"DELETE", "/v1/machines/{name}/snapshots/{snapshot}", "machine-snapshot", func(s *Server) handlerFunc { return s.deleteSnapshot }},
	{"POST", "/v1/machines/{name}/snapshots/{snapshot}/restore", "machine-snapshot-restore", func(s *Server) handlerFunc { return s.restoreSnapshot }},
	{"POST", "/v1/machines/{name}/attach", "machine-attach", func(s *Server) handlerFunc { return s.attachMachine }},
	{"POST", "/v1/machines/{name}/detach", "machine-detach", func(s *Server) handlerFunc { return s.detachMachine }},

	{"GET", "/v1/models", "models", func(s *Server) handlerFunc { return s.listModels }},
	{"POST", "/v1/models", "models", func(s *Server) handlerFunc { return s.setupModel }},
	{"GET", "/v1/models/{id}", "model", func(s *Server) handlerFunc { return s.getModel }},
	{"DELETE", "/v1/models/{id}", "model", func(s *Server) handlerFunc { return s.removeModel }},

	{"GET", "/v1/hardware", "hardware", func(s *Server) handlerFunc { return s.listHardware }},
	{"GET", "/v1/hardware/{name}", "hardware-model", func(s *Server) handlerFunc { return s.getHardware }},
	{"PUT", "/v1/hardware/{name}", "hardware-model", func(s *Server) handlerFunc { return s.addHardware }},
	{"DELETE", "/v1/hardware/{name}", "hardware-model", func(s *Server) handlerFunc { return s.removeHardware }},

	{"GET", "/v1/networks", "networks", func(s *Server) handlerFunc { return s.listNetworks }},
	{"POST", "/v1/networks", "networks", func(s *Server) handlerFunc { return s.createNetwork }},
	{"DELETE", "/v1/networks/{name}", "network", func(s *Server) handlerFunc { return s.removeNetwork }},

	{"GET", "/v1/volumes", "volumes", func(s *Server) handlerFunc { return s.listVolumes }},
	{"POST", "/v1/volumes", "volumes", func(s *Server) handlerFunc { return s.createVolume }},
	{"GET", "/v1/volumes/{name}", "volume", func(s *Server) handlerFunc { return s.getVolume }},
	{"DELETE", "/v1/volumes/{name}", "volume", func(s *Server) handlerFunc { return s.removeVolume }},

	{"GET", "/v1/operations", "operations", func(s *Server) handlerFunc { return s.listOperations }},
	{"GET", "/v1/operations/{id}", "operation", func(s *Server) handlerFunc { return s.getOperation }},
	{"GET", "/v1/operations/{id}/wait", "operation-wait", func(s *Server) handlerFunc { return s.waitOperation }},
	{"DELETE", "/v1/operations/{id}", "operation", func(s *Server) handlerFunc { return s.cancelOperation }},

	{"GET", "/v1/events", "events", func(s *Server) handlerFunc { return s.streamEvents }},
	{"GET", "/v1/openapi.json", "openapi", func(s *Server) handlerFunc { return s.openAPI }},
	{"GET", "/metrics", "metrics", func(s *Server) handlerFunc { return s.serveMetrics }},
	{"GET", "/healthz", "healthz", func(s *Server) handlerFunc { return healthz }},
}

type handlerFunc = func(w http.ResponseWriter, r *http.Request) error

func healthz(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, err := io.WriteString(w, "ok\n")
	return err
}

func (s *Server) routes() {
	mux := http.NewServeMux()
	for _, rt := range routeTable {
		mux.Handle(rt.method+" "+rt.path, s.instrument(rt.name, rt.handler(s)))
	}
	mux.Handle("/", s.instrument("other", func(w http.ResponseWriter, r *http.Request) error {
		return &httpError{status: http.StatusNotFound, code: wire.CodeNotFound, msg: fmt.Sprintf("no endpoint %s %s (see %s/openapi.json)", r.Method, r.URL.Path, wire.Prefix)}
	}))
	s.mux = mux
}

// httpError is an error with its HTTP status and code decided.
type httpError struct {
	status int
	code   string
	msg    string
	// retryAfter, when set, is sent as Retry-After (whole seconds).
	retryAfter time.Duration
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &httpError{status: http.StatusBadRequest, code: wire.CodeInvalid, msg: fmt.Sprintf(format, args...)}
}

// errorBody maps an error to its status and body.
func errorBody(err error) (int, wire.Error) {
	var he *httpError
	if errors.As(err, &he) {
		return he.status, wire.Error{Error: he.msg, Code: he.code}
	}
	body := wire.Error{Error: err.Error()}
	var se *vmfest.StateError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, wire.Error{Error: fmt.Sprintf("request body over %d bytes", mbe.Limit), Code: wire.CodeTooLarge}
	case errors.As(err, &se):
		body.Code = wire.CodeWrongState
		body.Machine, body.Op, body.State = se.Machine, se.Op, string(se.State)
		for _, n := range se.Needs {
			body.Needs = append(body.Needs, string(n))
		}
		return http.StatusConflict, body
	case errors.Is(err, vmfest.ErrWrongState):
		body.Code = wire.CodeWrongState
		return http.StatusConflict, body
	case errors.Is(err, vmfest.ErrExists):
		body.Code = wire.CodeExists
		return http.StatusConflict, body
	case errors.Is(err, vmfest.ErrNotFound):
		body.Code = wire.CodeNotFound
		return http.StatusNotFound, body
	case errors.Is(err, vmfest.ErrInvalid):
		body.Code = wire.CodeInvalid
		return http.StatusBadRequest, body
	case isBadImage(err):
		// Well-formed request, but what it names cannot be used.
		body.Code = wire.CodeInvalid
		return http.StatusUnprocessableEntity, body
	case errors.Is(err, vmfest.ErrUnavailable), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.ENOMEM):
		body.Code = wire.CodeUnavailable
		return http.StatusServiceUnavailable, body
	case errors.Is(err, vmfest.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		body.Code = wire.CodeTimeout
		return http.StatusGatewayTimeout, body
	case errors.Is(err, context.Canceled):
		body.Code = wire.CodeCanceled
		return http.StatusServiceUnavailable, body
	case errors.Is(err, errors.ErrUnsupported):
		body.Code = wire.CodeUnsupported
		return http.StatusNotImplemented, body
	}
	body.Code = wire.CodeInternal
	return http.StatusInternalServerError, body
}

// isBadImage reports the image package's errors for an image (or its
// source, digest or metadata) that the caller gave and vmfest cannot take.
func isBadImage(err error) bool {
	return errors.Is(err, image.ErrNotDiskImage) || errors.Is(err, image.ErrCorrupt) ||
		errors.Is(err, image.ErrChecksum) || errors.Is(err, image.ErrSource) || errors.Is(err, image.ErrMeta) ||
		errors.Is(err, image.ErrDownloadTooLarge) || errors.Is(err, image.ErrNotSelfContained) ||
		errors.Is(err, image.ErrDiskTooLarge)
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode the answer: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(append(data, '\n'))
	return err
}

// statusWriter remembers the status written, for metrics and logs.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush lets the event stream flush through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// instrument turns a handler returning an error into an http.Handler that
// writes the error as JSON and counts the request.
func (s *Server) instrument(route string, fn func(w http.ResponseWriter, r *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		begun := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		err := fn(sw, r)
		if err != nil {
			status, body := errorBody(err)
			if status >= 500 {
				s.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			if sw.status == 0 {
				var he *httpError
				if errors.As(err, &he) && he.retryAfter > 0 {
					sw.Header().Set("Retry-After", strconv.Itoa(int(he.retryAfter.Seconds())))
				}
				writeJSON(sw, status, body)
			}
		}
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		took := time.Since(begun)
		s.metrics.request(r.Method, route, sw.status, took)
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "took", took)
	})
}

// recoverer turns a panic into a 500 and a logged stack, so no input can
// take the server down.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.metrics.panicked()
				s.log.Error("panic serving a request", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				writeJSON(w, http.StatusInternalServerError, wire.Error{Error: "internal error (logged by the server)", Code: wire.CodeInternal})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// decode reads a JSON body strictly: at most wire.MaxBody bytes, no unknown
// fields, one value, nothing after it.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	return decodeUpTo(w, r, v, wire.MaxBody)
}

// decodeUpTo is decode with a body of up to limit bytes.
func decodeUpTo(w http.ResponseWriter, r *http.Request, v any, limit int64) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return &httpError{status: http.StatusUnsupportedMediaType, code: wire.CodeInvalid, msg: fmt.Sprintf("content type %q: send application/json", ct)}
	}
	return decodeBody(http.MaxBytesReader(w, r.Body, limit), v)
}

func decodeBody(body io.Reader, v any) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		if errors.Is(err, io.EOF) {
			return badRequest("request body: empty; send a JSON object")
		}
		return badRequest("request body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return badRequest("request body: more than one JSON value")
	}
	return nil
}

// pathName reads and validates a {name} or {id} path value: a valid name
// is always one safe path element.
func pathName(r *http.Request, key, kind string) (string, error) {
	n := r.PathValue(key)
	if err := store.ValidateName(kind, n); err != nil {
		return "", badRequest("%v", err)
	}
	return n, nil
}

// duration reads a query duration ("30s", "2m"), capped at MaxWait.
func (s *Server) duration(r *http.Request, key string, def time.Duration) (time.Duration, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, badRequest("?%s=%q: give a duration such as 30s or 2m", key, v)
	}
	if d > s.cfg.MaxWait {
		d = s.cfg.MaxWait
	}
	return d, nil
}
