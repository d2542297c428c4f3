package api

import (
	"errors"
	"net/http"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
)

// cloneMachine is POST /v1/machines/{name}/clone {"name": NEW}: the
// machine is cloned (see vmfest.Machine.Clone) within the request, as a
// start is. 201 with the clone's name and state; when the clone was made
// but did not start or keeps its source's identity, still 201, with
// the reason in error.
func (s *Server) cloneMachine(w http.ResponseWriter, r *http.Request) error {
	var req wire.CloneRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := validName(req.Name, "machine"); err != nil {
		return err
	}
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	c, err := m.Clone(r.Context(), req.Name)
	if c == nil {
		return err
	}
	s.events.machine(c.Name(), "created")
	out := wire.CloneResult{Name: c.Name()}
	if err != nil {
		out.Error = err.Error()
		out.NotReidentified = errors.Is(err, vmfest.ErrNotReidentified)
	}
	if st, serr := c.State(r.Context()); serr == nil {
		out.State = string(st)
	}
	w.Header().Set("Location", wire.Prefix+"/machines/"+c.Name())
	return writeJSON(w, http.StatusCreated, out)
}
