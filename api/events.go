package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/vmfest/vmfest/api/wire"
)

// broker fans events out to subscribers. A subscriber that does not keep
// up loses events (counted in the metrics) rather than slowing the server.
type broker struct {
	mu      sync.Mutex
	subs    map[chan wire.Event]struct{}
	dropped int64
}

func newBroker() *broker { return &broker{subs: map[chan wire.Event]struct{}{}} }

func (b *broker) subscribe() chan wire.Event {
	ch := make(chan wire.Event, 64)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	return ch
}

func (b *broker) unsubscribe(ch chan wire.Event) {
	b.mu.Lock()
	delete(b.subs, ch)
	b.mu.Unlock()
}

func (b *broker) publish(ev wire.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- ev:
		default:
			b.dropped++
		}
	}
}

func (b *broker) droppedCount() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped
}

func (b *broker) machine(name, action string) {
	b.publish(wire.Event{Type: wire.EventMachine, Time: time.Now().UTC(), Machine: name, Action: action})
}

func (b *broker) operation(op wire.Operation) {
	b.publish(wire.Event{Type: wire.EventOperation, Time: time.Now().UTC(), Operation: &op})
}

// streamEvents is GET /v1/events: server-sent events, one JSON wire.Event
// per "data:" line, named by their type; a comment every 15 s keeps idle
// connections open through proxies. Events are those of work done through
// this server (a CLI driving the Local server directly is not seen).
func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request) error {
	flusher, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("event stream: the connection cannot stream")
	}
	sub := s.events.subscribe()
	defer s.events.unsubscribe(sub)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": vmfest events\n\n")
	flusher.Flush()
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-s.ctx.Done():
			return nil
		case <-tick.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return nil
			}
		case ev := <-sub:
			data, err := json.Marshal(ev)
			if err != nil {
				continue
			}
			if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev.Type, data); err != nil {
				return nil
			}
		}
		flusher.Flush()
	}
}
