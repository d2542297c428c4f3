package api

import (
	"context"
	"fmt"
	"net/http"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/spec"
)

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) error {
	vs, err := s.srv.Volumes(r.Context())
	if err != nil {
		return err
	}
	if vs == nil {
		vs = []vmfest.Volume{}
	}
	return writeJSON(w, http.StatusOK, vs)
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) error {
	var req vmfest.VolumeSpec
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := validName(req.Name, "volume"); err != nil {
		return err
	}
	v, err := s.srv.CreateVolume(r.Context(), req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", wire.Prefix+"/volumes/"+req.Name)
	return writeJSON(w, http.StatusCreated, v)
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) error {
	n, err := pathName(r, "name", "volume")
	if err != nil {
		return err
	}
	v, err := s.srv.Volume(r.Context(), n)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, v)
}

func (s *Server) removeVolume(w http.ResponseWriter, r *http.Request) error {
	n, err := pathName(r, "name", "volume")
	if err != nil {
		return err
	}
	if err := s.srv.RemoveVolume(r.Context(), n); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// attachment checks what a caller names in a storage slot: a disk or an
// ISO is a host path, allowed by the same policy as an image's location
// (an ISO is read-only, a disk written).
func (s *Server) attachment(ctx context.Context, field string, a wire.Attachment) (vmfest.Attachment, error) {
	var err error
	if a.Disk != "" {
		if a.Disk, err = s.paths.check(ctx, field+".disk", a.Disk, false); err != nil {
			return vmfest.Attachment{}, err
		}
	}
	if a.ISO != "" {
		if a.ISO, err = s.paths.check(ctx, field+".iso", a.ISO, true); err != nil {
			return vmfest.Attachment{}, err
		}
	}
	return vmfest.Attachment(a), nil
}

// checkStorage applies the path policy to the locations a hardware spec's
// storage devices name.
func (s *Server) checkStorage(ctx context.Context, h *spec.Hardware) error {
	for i, c := range h.Storage {
		for j, d := range c.Devices {
			if d == nil || d.Location == "" {
				continue
			}
			loc, err := s.paths.check(ctx, fmt.Sprintf("hardware storage[%d].devices[%d].location", i, j), d.Location, d.DeviceType == spec.DeviceDVD)
			if err != nil {
				return err
			}
			d.Location = loc
		}
	}
	return nil
}

func (s *Server) attachMachine(w http.ResponseWriter, r *http.Request) error {
	return s.slotAction(w, r, "attached", vmfest.Machine.Attach)
}

func (s *Server) detachMachine(w http.ResponseWriter, r *http.Request) error {
	return s.slotAction(w, r, "detached", vmfest.Machine.Detach)
}

func (s *Server) slotAction(w http.ResponseWriter, r *http.Request, event string, act func(vmfest.Machine, context.Context, vmfest.Attachment) (spec.MountPoint, error)) error {
	n, err := pathName(r, "name", "machine")
	if err != nil {
		return err
	}
	var req wire.Attachment
	if err := decode(w, r, &req); err != nil {
		return err
	}
	a, err := s.attachment(r.Context(), "", req)
	if err != nil {
		return err
	}
	if event == "attached" {
		if err := s.mayUseVolume(r.Context(), req.Volume, "attach"); err != nil {
			return err
		}
	}
	m, err := s.srv.FindMachine(r.Context(), n)
	if err != nil {
		return err
	}
	at, err := act(m, r.Context(), a)
	if err != nil {
		return err
	}
	s.events.machine(n, event)
	return writeJSON(w, http.StatusOK, wire.Attached{Slot: at})
}
