package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
)

// copyTimeout bounds a copy without ?timeout= (the server's MaxWait caps
// any).
const copyTimeout = 30 * time.Minute

// copyRequest reads a copy's machine, ?path=, ?via= and ?timeout=.
func (s *Server) copyRequest(r *http.Request) (vmfest.Machine, string, vmfest.CopyOptions, context.Context, context.CancelFunc, error) {
	q := r.URL.Query()
	p := q.Get("path")
	if p == "" {
		return nil, "", vmfest.CopyOptions{}, nil, nil, badRequest("?path=: give the absolute path in the guest")
	}
	opts := vmfest.CopyOptions{Via: q.Get("via")}
	switch opts.Via {
	case vmfest.CopyViaAuto, vmfest.CopyViaSSH, vmfest.CopyViaAgent:
	default:
		return nil, "", opts, nil, nil, badRequest("?via=%q: use %s or %s (or leave it out)", opts.Via, vmfest.CopyViaSSH, vmfest.CopyViaAgent)
	}
	timeout, err := s.duration(r, "timeout", copyTimeout)
	if err != nil {
		return nil, "", opts, nil, nil, err
	}
	m, err := s.machine(r)
	if err != nil {
		return nil, "", opts, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	return m, p, opts, ctx, cancel, nil
}

// copyIn is PUT /v1/machines/{name}/files?path=DST: the body, a tar
// stream of at most wire.MaxCopy bytes, unpacked in the guest
// (Machine.CopyIn). Nothing of it is kept on the server.
func (s *Server) copyIn(w http.ResponseWriter, r *http.Request) error {
	if ct := r.Header.Get("Content-Type"); ct != wire.TarType {
		return &httpError{status: http.StatusUnsupportedMediaType, code: wire.CodeInvalid, msg: "content type " + ct + ": send " + wire.TarType}
	}
	m, dst, opts, ctx, cancel, err := s.copyRequest(r)
	if err != nil {
		return err
	}
	defer cancel()
	if err := m.CopyIn(ctx, dst, http.MaxBytesReader(w, r.Body, wire.MaxCopy), opts); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// copyOut is GET /v1/machines/{name}/files?path=SRC: a tar stream of the
// guest's SRC (Machine.CopyOut). An error before the stream begins is the
// usual JSON error; one after is the wire.CopyErrorTrailer trailer.
func (s *Server) copyOut(w http.ResponseWriter, r *http.Request) error {
	m, src, opts, ctx, cancel, err := s.copyRequest(r)
	if err != nil {
		return err
	}
	defer cancel()
	rc, err := m.CopyOut(ctx, src, opts)
	if err != nil {
		return err
	}
	defer rc.Close()
	w.Header().Set("Content-Type", wire.TarType)
	w.Header().Set("Trailer", wire.CopyErrorTrailer)
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err != nil {
		_, body := errorBody(err)
		data, _ := json.Marshal(body)
		w.Header().Set(wire.CopyErrorTrailer, string(data))
		s.log.Warn("copy out of a machine failed", "machine", m.Name(), "path", src, "err", err)
	}
	return nil
}
