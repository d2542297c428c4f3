package api

import (
	"net/http"

	"github.com/vmfest/vmfest/api/wire"
)

// saveMachine is POST /v1/machines/{name}/save: the machine's memory and
// device state go to disk and it ends; it answers with the new state. A
// save takes about as long as writing the machine's used memory, so it is
// a plain call bounded by the request, as start is.
func (s *Server) saveMachine(w http.ResponseWriter, r *http.Request) error {
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	if err := m.Save(r.Context()); err != nil {
		return err
	}
	s.events.machine(m.Name(), "saved")
	st, err := m.State(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, wire.State{State: string(st)})
}
