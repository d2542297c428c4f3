package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/vmfest/vmfest/api/wire"
)

// maxOperations bounds the finished operations kept in memory, and
// maxRunning the operations running at once (each holds a goroutine and
// maybe a QEMU connection until its timeout).
const (
	maxOperations = 1000
	maxRunning    = 256
)

// operation is one piece of long work and its record.
type operation struct {
	mu     sync.Mutex
	op     wire.Operation
	done   chan struct{}
	cancel context.CancelFunc
	// owner is the uid of the caller who started it on a socket with
	// owners (ownerGuard); "" elsewhere.
	owner string
}

func (o *operation) snapshot() wire.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := o.op
	if o.op.Progress != nil {
		p := *o.op.Progress
		out.Progress = &p
	}
	return out
}

// operations is the registry of running and recently finished operations.
// It lives in memory only: a restarted server forgets them (the work they
// did — a machine stopped, a model installed — is on disk).
type operations struct {
	mu      sync.Mutex
	byID    map[string]*operation
	running int
	// limits caps the running operations of a kind (setup-model: see
	// Config.MaxSetups); byKind counts them.
	limits  map[string]int
	byKind  map[string]int
	keep    time.Duration
	events  *broker
	metrics *metrics
}

func newOperations(keep time.Duration, events *broker, m *metrics) *operations {
	return &operations{byID: map[string]*operation{}, limits: map[string]int{}, byKind: map[string]int{}, keep: keep, events: events, metrics: m}
}

// busy is the refusal of an operation over a cap: 503 with Retry-After,
// since the cap frees itself as operations end.
func busy(format string, args ...any) error {
	return &httpError{status: http.StatusServiceUnavailable, code: wire.CodeUnavailable, retryAfter: 10 * time.Second,
		msg: fmt.Sprintf(format, args...)}
}

func newID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// start runs fn in its own goroutine under ctx (the server's life) bounded
// by timeout, and returns its record at once.
func (ops *operations) start(ctx context.Context, kind, target string, timeout time.Duration, fn func(ctx context.Context, progress func(wire.Progress)) (any, error)) (wire.Operation, error) {
	ops.mu.Lock()
	ops.gc()
	if ops.running >= maxRunning {
		ops.mu.Unlock()
		return wire.Operation{}, busy("%d operations are running: wait for some to end, or cancel them", maxRunning)
	}
	if limit, ok := ops.limits[kind]; ok && ops.byKind[kind] >= limit {
		ops.mu.Unlock()
		return wire.Operation{}, busy("%d %s operations are running, the most this server runs at once: try again when one has ended", limit, kind)
	}
	ops.running++
	ops.byKind[kind]++
	ctx, cancel := context.WithTimeout(ctx, timeout)
	o := &operation{
		op:     wire.Operation{ID: newID(), Kind: kind, Target: target, Status: wire.Running, Started: time.Now().UTC()},
		done:   make(chan struct{}),
		cancel: cancel,
	}
	if c := callerOf(ctx); c != nil {
		o.owner = c.uid
	}
	ops.byID[o.op.ID] = o
	ops.mu.Unlock()
	ops.metrics.opStarted(kind)
	first := o.snapshot()
	ops.events.operation(first)

	// Progress is recorded at every report but published (to the event
	// stream and to waiters) at most every 100 ms, at a phase change and at
	// the end of a phase: a download reports far more often.
	var lastPublished time.Time
	var lastPhase string
	progress := func(p wire.Progress) {
		o.mu.Lock()
		o.op.Progress = &p
		publish := p.Phase != lastPhase || time.Since(lastPublished) >= 100*time.Millisecond || (p.Total > 0 && p.Done >= p.Total)
		if publish {
			lastPublished, lastPhase = time.Now(), p.Phase
		}
		o.mu.Unlock()
		if publish {
			ops.events.operation(o.snapshot())
		}
	}
	go func() {
		defer cancel()
		res, err := runGuarded(ctx, fn, progress)
		o.mu.Lock()
		now := time.Now().UTC()
		o.op.Finished = &now
		switch {
		case err == nil:
			o.op.Status = wire.Succeeded
			if res != nil {
				if data, merr := json.Marshal(res); merr == nil {
					o.op.Result = data
				} else {
					o.op.Status = wire.Failed
					o.op.Error = &wire.Error{Error: fmt.Sprintf("encode the result: %v", merr), Code: wire.CodeInternal}
				}
			}
		case errors.Is(err, context.Canceled):
			o.op.Status = wire.Canceled
			_, body := errorBody(err)
			o.op.Error = &body
		default:
			o.op.Status = wire.Failed
			_, body := errorBody(err)
			o.op.Error = &body
		}
		final := o.op
		o.mu.Unlock()
		ops.mu.Lock()
		ops.running--
		ops.byKind[kind]--
		ops.mu.Unlock()
		close(o.done)
		ops.metrics.opFinished(kind, final.Status, now.Sub(final.Started))
		ops.events.operation(final)
	}()
	return first, nil
}

// runGuarded runs fn, turning a panic into an error: an operation runs
// outside any request, so the recover middleware cannot catch it.
func runGuarded(ctx context.Context, fn func(context.Context, func(wire.Progress)) (any, error), progress func(wire.Progress)) (res any, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("internal error: %v", v)
		}
	}()
	return fn(ctx, progress)
}

// gc forgets finished operations older than keep, and the oldest finished
// ones beyond maxOperations. Callers hold ops.mu.
func (ops *operations) gc() {
	var finished []*operation
	for id, o := range ops.byID {
		o.mu.Lock()
		fin := o.op.Finished
		o.mu.Unlock()
		if fin == nil {
			continue
		}
		if time.Since(*fin) > ops.keep {
			delete(ops.byID, id)
			continue
		}
		finished = append(finished, o)
	}
	if len(finished) < maxOperations {
		return
	}
	sort.Slice(finished, func(i, j int) bool { return finished[i].op.Finished.Before(*finished[j].op.Finished) })
	for _, o := range finished[:len(finished)-maxOperations+1] {
		delete(ops.byID, o.op.ID)
	}
}

func (ops *operations) get(id string) (*operation, bool) {
	ops.mu.Lock()
	defer ops.mu.Unlock()
	o, ok := ops.byID[id]
	return o, ok
}

func (ops *operations) list() []wire.Operation {
	ops.mu.Lock()
	all := make([]*operation, 0, len(ops.byID))
	for _, o := range ops.byID {
		all = append(all, o)
	}
	ops.mu.Unlock()
	out := make([]wire.Operation, len(all))
	for i, o := range all {
		out[i] = o.snapshot()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

// startOp starts an operation and answers 202 with it.
// The operation outlives r, but remembers who started it (callerOf).
func (s *Server) startOp(w http.ResponseWriter, r *http.Request, kind, target string, timeout time.Duration, fn func(ctx context.Context, progress func(wire.Progress)) (any, error)) error {
	ctx := s.ctx
	if c := callerOf(r.Context()); c != nil {
		ctx = context.WithValue(ctx, callerKey{}, c)
	}
	op, err := s.ops.start(ctx, kind, target, timeout, fn)
	if err != nil {
		return err
	}
	w.Header().Set("Location", wire.Prefix+"/operations/"+op.ID)
	return writeJSON(w, http.StatusAccepted, op)
}

func (s *Server) operation(r *http.Request) (*operation, error) {
	id := r.PathValue("id")
	if len(id) != 24 {
		return nil, &httpError{status: http.StatusNotFound, code: wire.CodeNotFound, msg: fmt.Sprintf("operation %q: not found", id)}
	}
	o, ok := s.ops.get(id)
	if !ok {
		return nil, &httpError{status: http.StatusNotFound, code: wire.CodeNotFound, msg: fmt.Sprintf("operation %q: not found (finished operations are kept %s)", id, s.cfg.KeepOperations)}
	}
	return o, nil
}

func (s *Server) listOperations(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, s.ops.list())
}

func (s *Server) getOperation(w http.ResponseWriter, r *http.Request) error {
	o, err := s.operation(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, o.snapshot())
}

// waitOperation answers when the operation is done or ?timeout= (default
// 30s, at most 1m) has passed, whichever comes first; the answer is the
// operation either way. With ?progress=true it also answers on the next
// progress report.
func (s *Server) waitOperation(w http.ResponseWriter, r *http.Request) error {
	o, err := s.operation(r)
	if err != nil {
		return err
	}
	d, err := s.duration(r, "timeout", 30*time.Second)
	if err != nil {
		return err
	}
	d = min(d, time.Minute)
	var progress <-chan wire.Event
	if r.URL.Query().Get("progress") == "true" {
		sub := s.events.subscribe()
		defer s.events.unsubscribe(sub)
		progress = sub
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-o.done:
		case <-t.C:
		case <-r.Context().Done():
			return r.Context().Err()
		case <-s.ctx.Done():
		case ev, ok := <-progress:
			if !ok || ev.Operation == nil || ev.Operation.ID != o.op.ID {
				if !ok {
					progress = nil
				}
				continue
			}
		}
		return writeJSON(w, http.StatusOK, o.snapshot())
	}
}

// cancelOperation cancels a running operation (a no-op on a finished one)
// and answers with its record once it has ended.
func (s *Server) cancelOperation(w http.ResponseWriter, r *http.Request) error {
	o, err := s.operation(r)
	if err != nil {
		return err
	}
	if c := callerOf(r.Context()); c != nil && !c.admin && o.owner != c.uid {
		who := "root"
		if o.owner != "" {
			who = userName(o.owner)
		}
		return &httpError{status: http.StatusForbidden, code: wire.CodeForbidden,
			msg: fmt.Sprintf("operation %s was started by %s: only they, root or %s may cancel it", o.op.ID, who, groupName(c.adminGID))}
	}
	o.cancel()
	select {
	case <-o.done:
	case <-r.Context().Done():
		return r.Context().Err()
	}
	return writeJSON(w, http.StatusOK, o.snapshot())
}
