package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/store"
)

// machineEntry is one item of GET /v1/machines: the machine's Info, or its
// name and why its Info could not be read (so one broken machine never hides
// the others).
type machineEntry struct {
	vmfest.Info
	Error string `json:"error,omitempty"`
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	ms, err := s.srv.Machines(ctx)
	if err != nil {
		return err
	}
	want := map[string]string{}
	for _, l := range r.URL.Query()["label"] {
		k, v, _, err := vmfest.ParseLabel(l, false)
		if err != nil {
			return badRequest("label: %v", err)
		}
		want[k] = v
	}
	if r.URL.Query().Get("fields") == "name" && len(want) == 0 {
		names := make([]machineEntry, len(ms))
		for i, m := range ms {
			names[i].Name = m.Name()
		}
		return writeJSON(w, http.StatusOK, names)
	}
	out := make([]machineEntry, len(ms))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			info, err := m.Info(ctx)
			if err != nil {
				out[i] = machineEntry{Info: vmfest.Info{Name: m.Name(), State: "unknown"}, Error: err.Error()}
				return
			}
			out[i] = machineEntry{Info: info}
		}()
	}
	wg.Wait()
	if len(want) > 0 {
		kept := out[:0]
		for _, e := range out {
			if vmfest.HasLabels(e.Labels, want) {
				kept = append(kept, e)
			}
		}
		out = kept
	}
	return writeJSON(w, http.StatusOK, out)
}

func (s *Server) relabelMachine(w http.ResponseWriter, r *http.Request) error {
	var req wire.Relabel
	if err := decode(w, r, &req); err != nil {
		return err
	}
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	if err := m.Relabel(r.Context(), req.Set, req.Remove); err != nil {
		return err
	}
	s.events.machine(m.Name(), "relabelled")
	info, err := m.Info(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, info)
}

func (s *Server) createMachine(w http.ResponseWriter, r *http.Request) error {
	var req wire.CreateMachine
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := validName(req.Name, "machine"); err != nil {
		return err
	}
	var img vmfest.Image
	switch {
	case req.Image.Model != "" && req.Image.Spec != nil:
		return badRequest("image: give a model or a spec, not both")
	case req.Image.Model != "":
		if err := validName(req.Image.Model, "image model"); err != nil {
			return err
		}
		img = vmfest.ImageModel(req.Image.Model)
	case req.Image.Spec != nil:
		im := *req.Image.Spec
		loc, err := s.paths.check(r.Context(), "image location", im.Location, im.Immutable)
		if err != nil {
			return err
		}
		im.Location = loc
		img = vmfest.ImageSpec(im)
	default:
		return badRequest("image: give a model or a spec")
	}
	var hw vmfest.Hardware
	switch {
	case req.Hardware.Model != "" && req.Hardware.Spec != nil:
		return badRequest("hardware: give a model or a spec, not both")
	case req.Hardware.Model != "":
		if err := validName(req.Hardware.Model, "hardware model"); err != nil {
			return err
		}
		hw = vmfest.HardwareModel(req.Hardware.Model)
	case req.Hardware.Spec != nil:
		h := *req.Hardware.Spec
		if err := s.checkStorage(r.Context(), &h); err != nil {
			return err
		}
		hw = vmfest.HardwareSpec(h)
	}
	// Neither: the served Server decides (Local refuses it), as it would
	// for a local caller.
	var opts []vmfest.InstanceOption
	if len(req.Labels) > 0 {
		opts = append(opts, vmfest.WithLabels(req.Labels))
	}
	if req.UserData != nil {
		opts = append(opts, vmfest.WithUserData([]byte(*req.UserData)))
	}
	if req.Driver != "" {
		opts = append(opts, vmfest.WithDriver(req.Driver))
	}
	for i, a := range req.Attach {
		att, err := s.attachment(r.Context(), fmt.Sprintf("attach[%d]", i), a)
		if err != nil {
			return err
		}
		if err := s.mayUseVolume(r.Context(), a.Volume, "attach"); err != nil {
			return err
		}
		opts = append(opts, vmfest.WithAttachment(att))
	}
	if err := s.mayUseHardwareVolumes(r.Context(), req.Hardware); err != nil {
		return err
	}
	img.SSHKeys = req.Image.SSHKeys
	m, err := s.srv.Instance(r.Context(), req.Name, img, hw, opts...)
	if err != nil {
		return err
	}
	s.events.machine(req.Name, "created")
	info, err := m.Info(r.Context())
	if err != nil {
		return err
	}
	w.Header().Set("Location", wire.Prefix+"/machines/"+req.Name)
	return writeJSON(w, http.StatusCreated, info)
}

// validName validates a name from a body, as name does one from the path.
func validName(n, kind string) error {
	if err := store.ValidateName(kind, n); err != nil {
		return badRequest("%v", err)
	}
	return nil
}

// machine finds the machine named in the path.
func (s *Server) machine(r *http.Request) (vmfest.Machine, error) {
	n, err := pathName(r, "name", "machine")
	if err != nil {
		return nil, err
	}
	return s.srv.FindMachine(r.Context(), n)
}

func (s *Server) getMachine(w http.ResponseWriter, r *http.Request) error {
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	info, err := m.Info(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, info)
}

func (s *Server) destroyMachine(w http.ResponseWriter, r *http.Request) error {
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	var opts []vmfest.DestroyOption
	switch r.URL.Query().Get("keep-disk") {
	case "", "false":
	case "true":
		opts = append(opts, vmfest.KeepDisk())
	default:
		return badRequest("keep-disk: %q: allowed: true, false", r.URL.Query().Get("keep-disk"))
	}
	if err := m.Destroy(r.Context(), opts...); err != nil {
		return err
	}
	s.events.machine(m.Name(), "destroyed")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) machineState(w http.ResponseWriter, r *http.Request) error {
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	st, err := m.State(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, wire.State{State: string(st)})
}

// machineAction runs start, pause, resume, power-down (synchronous: they
// take well under a second), and stop, wait-ready and start?wait= (long:
// 202 and an operation).
func (s *Server) machineAction(w http.ResponseWriter, r *http.Request) error {
	action := r.PathValue("action")
	var quick func(m vmfest.Machine, ctx context.Context) error
	past := ""
	switch action {
	case "start", "pause", "resume", "power-down", "stop", "wait-ready":
	default:
		return &httpError{status: http.StatusNotFound, code: wire.CodeNotFound, msg: fmt.Sprintf("no action %q: use start, pause, resume, stop, power-down or wait-ready", action)}
	}
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	switch action {
	case "start":
		wait, err := s.duration(r, "wait", 0)
		if err != nil {
			return err
		}
		if wait > 0 {
			return s.startOp(w, r, wire.OpStart, m.Name(), wait, func(ctx context.Context, _ func(wire.Progress)) (any, error) {
				if err := m.Start(ctx); err != nil {
					return nil, err
				}
				s.events.machine(m.Name(), "started")
				return nil, m.WaitReady(ctx)
			})
		}
		quick, past = vmfest.Machine.Start, "started"
	case "pause":
		quick, past = vmfest.Machine.Pause, "paused"
	case "resume":
		quick, past = vmfest.Machine.Resume, "resumed"
	case "power-down":
		quick, past = vmfest.Machine.PowerDown, "powered-down"
	case "stop":
		timeout, err := s.duration(r, "timeout", vmfest.DefaultStopTimeout)
		if err != nil {
			return err
		}
		return s.startOp(w, r, wire.OpStop, m.Name(), timeout, func(ctx context.Context, _ func(wire.Progress)) (any, error) {
			if err := m.Stop(ctx); err != nil {
				return nil, err
			}
			s.events.machine(m.Name(), "stopped")
			return nil, nil
		})
	case "wait-ready":
		timeout, err := s.duration(r, "timeout", 2*time.Minute)
		if err != nil {
			return err
		}
		// Refuse at once what cannot succeed, rather than in an operation.
		if st, err := m.State(r.Context()); err != nil {
			return err
		} else if st != vmfest.Running {
			return &vmfest.StateError{Machine: m.Name(), Op: "wait for", State: st, Needs: []vmfest.State{vmfest.Running}}
		}
		return s.startOp(w, r, wire.OpWaitReady, m.Name(), timeout, func(ctx context.Context, _ func(wire.Progress)) (any, error) {
			return nil, m.WaitReady(ctx)
		})
	}
	if err := quick(m, r.Context()); err != nil {
		return err
	}
	s.events.machine(m.Name(), past)
	st, err := m.State(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, wire.State{State: string(st)})
}

func (s *Server) machineIP(w http.ResponseWriter, r *http.Request) error {
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	slot := 0
	if v := r.URL.Query().Get("slot"); v != "" {
		slot, err = strconv.Atoi(v)
		if err != nil || slot < 0 || slot > 63 {
			return badRequest("?slot=%q: give a NIC slot number (0 is the first NIC)", v)
		}
	}
	wait, err := s.duration(r, "wait", 0)
	if err != nil {
		return err
	}
	// Without ?wait= the served Server's own default bound applies, as for
	// a local caller whose context has no deadline.
	ctx := r.Context()
	if wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	a, err := m.IP(ctx, slot)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, a)
}

func (s *Server) machineConsole(w http.ResponseWriter, r *http.Request) error {
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	data, err := m.ConsoleLog(r.Context())
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, err = w.Write(data)
	return err
}

func (s *Server) changeMachine(w http.ResponseWriter, r *http.Request) error {
	var req wire.Change
	if err := decode(w, r, &req); err != nil {
		return err
	}
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	c := vmfest.Change{MemorySize: req.MemorySize, CPUCount: req.CPUCount, DiskSize: req.DiskSize}
	if h := req.Hardware; h != nil {
		switch {
		case h.Model != "" && h.Spec != nil:
			return badRequest("hardware: give a model or a spec, not both")
		case h.Model != "":
			if err := validName(h.Model, "hardware model"); err != nil {
				return err
			}
			hw := vmfest.HardwareModel(h.Model)
			c.Hardware = &hw
		case h.Spec != nil:
			hs := *h.Spec
			if err := s.checkStorage(r.Context(), &hs); err != nil {
				return err
			}
			hw := vmfest.HardwareSpec(hs)
			c.Hardware = &hw
		}
	}
	if err := m.Set(r.Context(), c); err != nil {
		return err
	}
	s.events.machine(m.Name(), "changed")
	info, err := m.Info(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, info)
}

// execMachine runs a command through the guest agent and answers when it
// ends, within ?timeout= (default and cap: the server's MaxWait).
func (s *Server) execMachine(w http.ResponseWriter, r *http.Request) error {
	var req vmfest.ExecRequest
	// Room for MaxExecStdin in base64, and the command.
	if err := decodeUpTo(w, r, &req, vmfest.MaxExecStdin/3*4+wire.MaxBody); err != nil {
		return err
	}
	m, err := s.machine(r)
	if err != nil {
		return err
	}
	timeout, err := s.duration(r, "timeout", vmfest.DefaultExecTimeout)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	res, err := m.Exec(ctx, req)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, res)
}
