package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmfest/vmfest"
)

// The metrics are written in the Prometheus text exposition format (0.0.4)
// by hand: a handful of counters, gauges and two histograms do not justify
// client_golang and its dependency tree (see docs/api.md).

var buckets = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300}

type histogram struct {
	counts []uint64 // per bucket, not cumulative
	sum    float64
	count  uint64
}

func (h *histogram) observe(v float64) {
	if h.counts == nil {
		h.counts = make([]uint64, len(buckets))
	}
	for i, b := range buckets {
		if v <= b {
			h.counts[i]++
			break
		}
	}
	h.sum += v
	h.count++
}

type metrics struct {
	mu         sync.Mutex
	requests   map[[3]string]uint64 // method, route, code
	durations  map[string]*histogram
	opsStarted map[string]uint64
	opsDone    map[[2]string]uint64 // kind, status
	opDur      map[string]*histogram
	opsRunning map[string]int64
	panics     uint64
}

func newMetrics() *metrics {
	return &metrics{
		requests:   map[[3]string]uint64{},
		durations:  map[string]*histogram{},
		opsStarted: map[string]uint64{},
		opsDone:    map[[2]string]uint64{},
		opDur:      map[string]*histogram{},
		opsRunning: map[string]int64{},
	}
}

func (m *metrics) request(method, route string, code int, d time.Duration) {
	switch method {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS":
	default:
		method = "other" // callers choose methods: keep the label set bounded
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[[3]string{method, route, strconv.Itoa(code)}]++
	h := m.durations[route]
	if h == nil {
		h = &histogram{}
		m.durations[route] = h
	}
	h.observe(d.Seconds())
}

func (m *metrics) opStarted(kind string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.opsStarted[kind]++
	m.opsRunning[kind]++
}

func (m *metrics) opFinished(kind, status string, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.opsDone[[2]string{kind, status}]++
	m.opsRunning[kind]--
	h := m.opDur[kind]
	if h == nil {
		h = &histogram{}
		m.opDur[kind] = h
	}
	h.observe(d.Seconds())
}

func (m *metrics) panicked() {
	m.mu.Lock()
	m.panics++
	m.mu.Unlock()
}

func labels(kv ...string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(kv[i])
		b.WriteString("=")
		b.WriteString(strconv.Quote(kv[i+1]))
	}
	b.WriteByte('}')
	return b.String()
}

func sortedKeys[K comparable, V any](m map[K]V, less func(a, b K) bool) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return less(keys[i], keys[j]) })
	return keys
}

func writeHistogram(w io.Writer, name, label string, hs map[string]*histogram) {
	for _, k := range sortedKeys(hs, func(a, b string) bool { return a < b }) {
		h := hs[k]
		var cum uint64
		for i, b := range buckets {
			cum += h.counts[i]
			fmt.Fprintf(w, "%s_bucket%s %d\n", name, labels(label, k, "le", strconv.FormatFloat(b, 'g', -1, 64)), cum)
		}
		fmt.Fprintf(w, "%s_bucket%s %d\n", name, labels(label, k, "le", "+Inf"), h.count)
		fmt.Fprintf(w, "%s_sum%s %g\n", name, labels(label, k), h.sum)
		fmt.Fprintf(w, "%s_count%s %d\n", name, labels(label, k), h.count)
	}
}

// serveMetrics is GET /metrics. Machine counts are read from the served
// Server at scrape time, like every other state.
func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	byState := map[string]int{}
	for _, st := range []vmfest.State{vmfest.PoweredOff, vmfest.Running, vmfest.Paused, vmfest.Stopping, vmfest.Aborted} {
		byState[string(st)] = 0
	}
	ms, err := s.srv.Machines(ctx)
	if err != nil {
		return err
	}
	for _, m := range ms {
		st, err := m.State(ctx)
		if err != nil {
			st = "unknown"
		}
		byState[string(st)]++
	}

	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	var b strings.Builder
	b.WriteString("# HELP vmfest_machines Machines by state, read at scrape time.\n# TYPE vmfest_machines gauge\n")
	for _, st := range sortedKeys(byState, func(a, b string) bool { return a < b }) {
		fmt.Fprintf(&b, "vmfest_machines%s %d\n", labels("state", st), byState[st])
	}

	m := s.metrics
	m.mu.Lock()
	b.WriteString("# HELP vmfest_http_requests_total HTTP requests by method, route and status code.\n# TYPE vmfest_http_requests_total counter\n")
	for _, k := range sortedKeys(m.requests, func(a, b [3]string) bool { return a[0]+a[1]+a[2] < b[0]+b[1]+b[2] }) {
		fmt.Fprintf(&b, "vmfest_http_requests_total%s %d\n", labels("method", k[0], "route", k[1], "code", k[2]), m.requests[k])
	}
	b.WriteString("# HELP vmfest_http_request_duration_seconds Time to answer a request, by route.\n# TYPE vmfest_http_request_duration_seconds histogram\n")
	writeHistogram(&b, "vmfest_http_request_duration_seconds", "route", m.durations)
	b.WriteString("# HELP vmfest_operations_started_total Operations started, by kind.\n# TYPE vmfest_operations_started_total counter\n")
	for _, k := range sortedKeys(m.opsStarted, func(a, b string) bool { return a < b }) {
		fmt.Fprintf(&b, "vmfest_operations_started_total%s %d\n", labels("kind", k), m.opsStarted[k])
	}
	b.WriteString("# HELP vmfest_operations_total Operations finished, by kind and status.\n# TYPE vmfest_operations_total counter\n")
	for _, k := range sortedKeys(m.opsDone, func(a, b [2]string) bool { return a[0]+a[1] < b[0]+b[1] }) {
		fmt.Fprintf(&b, "vmfest_operations_total%s %d\n", labels("kind", k[0], "status", k[1]), m.opsDone[k])
	}
	b.WriteString("# HELP vmfest_operations_running Operations running now, by kind.\n# TYPE vmfest_operations_running gauge\n")
	for _, k := range sortedKeys(m.opsRunning, func(a, b string) bool { return a < b }) {
		fmt.Fprintf(&b, "vmfest_operations_running%s %d\n", labels("kind", k), m.opsRunning[k])
	}
	b.WriteString("# HELP vmfest_operation_duration_seconds Time operations took, by kind.\n# TYPE vmfest_operation_duration_seconds histogram\n")
	writeHistogram(&b, "vmfest_operation_duration_seconds", "kind", m.opDur)
	fmt.Fprintf(&b, "# HELP vmfest_http_panics_total Requests that panicked (answered 500).\n# TYPE vmfest_http_panics_total counter\nvmfest_http_panics_total %d\n", m.panics)
	m.mu.Unlock()
	fmt.Fprintf(&b, "# HELP vmfest_events_dropped_total Events not delivered to a slow subscriber.\n# TYPE vmfest_events_dropped_total counter\nvmfest_events_dropped_total %d\n", s.events.droppedCount())
	_, err = io.WriteString(w, b.String())
	return err
}
