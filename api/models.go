package api

import (
	"context"
	"net/http"
	"net/url"
	"strings"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/image"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
)

func (s *Server) listModels(w http.ResponseWriter, r *http.Request) error {
	ms, err := s.srv.Models(r.Context())
	if err != nil {
		return err
	}
	if ms == nil {
		ms = []model.ImageModel{}
	}
	return writeJSON(w, http.StatusOK, ms)
}

func (s *Server) getModel(w http.ResponseWriter, r *http.Request) error {
	id, err := pathName(r, "id", "image model")
	if err != nil {
		return err
	}
	m, err := s.srv.Model(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, m)
}

func (s *Server) removeModel(w http.ResponseWriter, r *http.Request) error {
	id, err := pathName(r, "id", "image model")
	if err != nil {
		return err
	}
	if err := s.srv.RemoveModel(r.Context(), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// setupModel installs an image model as an operation. The source is an
// http(s) URL, or a path inside an allowed directory (a remote caller must
// not make the server read any file it can). A caller that is not this
// host's user fetches under the restricted policy (Config.FetchAllow).
func (s *Server) setupModel(w http.ResponseWriter, r *http.Request) error {
	var req wire.SetupModel
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Source == "" {
		return badRequest("source: give an http(s) URL or a path on the server")
	}
	if req.ID != "" {
		if err := validName(req.ID, "image model"); err != nil {
			return err
		}
	}
	source := req.Source
	u, err := url.Parse(source)
	switch {
	case err == nil && strings.Contains(source, "://") && (u.Scheme == "http" || u.Scheme == "https"):
		if u.Host == "" {
			return badRequest("source %q: the URL has no host", source)
		}
	case err == nil && strings.Contains(source, "://") && u.Scheme == "file":
		if u.Host != "" && u.Host != "localhost" {
			return badRequest("source %q: a file URL must be file:///absolute/path", source)
		}
		if source, err = s.paths.check(r.Context(), "source", u.Path, true); err != nil {
			return err
		}
	case strings.Contains(source, "://"):
		return badRequest("source %q: use an http, https or file URL, or an absolute path on the server", source)
	default:
		if source, err = s.paths.check(r.Context(), "source", source, true); err != nil {
			return err
		}
	}
	for _, m := range []*spec.Image{req.Meta, req.Overrides} {
		if m != nil && m.Location != "" {
			p, err := s.paths.check(r.Context(), "meta location", m.Location, true)
			if err != nil {
				return err
			}
			m.Location = p
		}
	}
	opts := vmfest.SetupOptions{ID: req.ID, SHA256: req.SHA256, Meta: req.Meta, Overrides: req.Overrides, Replace: req.Replace}
	if !localCaller(r) {
		// A token holder: the server fetches only where the operator lets
		// it (never set from the request, which has no such field).
		opts.FetchPolicy = image.FetchPolicy{Restricted: true, Allow: s.cfg.FetchAllow}
	}
	return s.startOp(w, r, wire.OpSetupModel, req.ID, s.cfg.MaxWait, func(ctx context.Context, progress func(wire.Progress)) (any, error) {
		opts.Progress = func(p vmfest.Progress) { progress(wire.Progress(p)) }
		return s.srv.SetupModel(ctx, source, opts)
	})
}

func (s *Server) listHardware(w http.ResponseWriter, r *http.Request) error {
	names, err := s.srv.HardwareModels(r.Context())
	if err != nil {
		return err
	}
	if names == nil {
		names = []string{}
	}
	return writeJSON(w, http.StatusOK, names)
}

func (s *Server) getHardware(w http.ResponseWriter, r *http.Request) error {
	n, err := pathName(r, "name", "hardware model")
	if err != nil {
		return err
	}
	h, err := s.srv.HardwareModel(r.Context(), n)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, h)
}

func (s *Server) addHardware(w http.ResponseWriter, r *http.Request) error {
	n, err := pathName(r, "name", "hardware model")
	if err != nil {
		return err
	}
	var h spec.Hardware
	if err := decode(w, r, &h); err != nil {
		return err
	}
	if err := s.checkStorage(r.Context(), &h); err != nil {
		return err
	}
	if err := s.srv.AddHardwareModel(r.Context(), n, h); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) removeHardware(w http.ResponseWriter, r *http.Request) error {
	n, err := pathName(r, "name", "hardware model")
	if err != nil {
		return err
	}
	if err := s.srv.RemoveHardwareModel(r.Context(), n); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listNetworks(w http.ResponseWriter, r *http.Request) error {
	ns, err := s.srv.Networks(r.Context())
	if err != nil {
		return err
	}
	if ns == nil {
		ns = []vmfest.Network{}
	}
	return writeJSON(w, http.StatusOK, ns)
}

func (s *Server) createNetwork(w http.ResponseWriter, r *http.Request) error {
	var req vmfest.NetworkSpec
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := validName(req.Name, "network"); err != nil {
		return err
	}
	n, err := s.srv.CreateNetwork(r.Context(), req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, n)
}

func (s *Server) removeNetwork(w http.ResponseWriter, r *http.Request) error {
	n, err := pathName(r, "name", "network")
	if err != nil {
		return err
	}
	if err := s.srv.RemoveNetwork(r.Context(), n); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
