package api

import (
	"net/http"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
)

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) error {
	m, err := s.pathMachine(r)
	if err != nil {
		return err
	}
	snaps, err := m.Snapshots(r.Context())
	if err != nil {
		return err
	}
	if snaps == nil {
		snaps = []vmfest.Snapshot{}
	}
	return writeJSON(w, http.StatusOK, snaps)
}

func (s *Server) takeSnapshot(w http.ResponseWriter, r *http.Request) error {
	var req wire.SnapshotRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := validName(req.Name, "snapshot"); err != nil {
		return err
	}
	m, err := s.pathMachine(r)
	if err != nil {
		return err
	}
	snap, err := m.TakeSnapshot(r.Context(), req.Name)
	if err != nil {
		return err
	}
	s.events.machine(m.Name(), "snapshotted")
	return writeJSON(w, http.StatusCreated, snap)
}

func (s *Server) restoreSnapshot(w http.ResponseWriter, r *http.Request) error {
	return s.onSnapshot(r, func(m vmfest.Machine, snap string) error {
		if err := m.RestoreSnapshot(r.Context(), snap); err != nil {
			return err
		}
		s.events.machine(m.Name(), "restored")
		info, err := m.Info(r.Context())
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, info)
	})
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) error {
	return s.onSnapshot(r, func(m vmfest.Machine, snap string) error {
		if err := m.DeleteSnapshot(r.Context(), snap); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// onSnapshot runs fn on the machine and snapshot the path names.
func (s *Server) onSnapshot(r *http.Request, fn func(m vmfest.Machine, snap string) error) error {
	snap, err := pathName(r, "snapshot", "snapshot")
	if err != nil {
		return err
	}
	m, err := s.pathMachine(r)
	if err != nil {
		return err
	}
	return fn(m, snap)
}

// pathMachine finds the machine the path's {name} names.
func (s *Server) pathMachine(r *http.Request) (vmfest.Machine, error) {
	n, err := pathName(r, "name", "machine")
	if err != nil {
		return nil, err
	}
	return s.srv.FindMachine(r.Context(), n)
}
