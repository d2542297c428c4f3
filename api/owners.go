package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/spec"
)

// OwnerLabel is the label in which a server with owners (Listen.AdminGroup)
// records who created a machine: the creator's numeric uid, read from the
// Unix socket (SO_PEERCRED), never from the request.
const OwnerLabel = "vmfest/owner"

// peer is what the kernel says of the process at the other end of a Unix
// socket connection, as it was when it connected.
type peer struct {
	cred   unix.Ucred
	groups []uint32 // supplementary groups (SO_PEERGROUPS); nil if unknown
}

func (p *peer) inGroup(gid int) bool {
	if gid < 0 {
		return false
	}
	return int(p.cred.Gid) == gid || slices.Contains(p.groups, uint32(gid))
}

// peerGroups reads a connection's SO_PEERGROUPS (Linux 4.13 and later).
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case e == 0:
			return buf[:n/4], nil
		case e == syscall.ERANGE && int(n/4) > len(buf):
			buf = make([]uint32, n/4)
		default:
			return nil, e
		}
	}
}

// ownerGuard serves a Unix socket shared by a group: a caller owns the
// machines and volumes they create (OwnerLabel is set to their uid) and
// the operations they start. They may only read the others' machines
// (list, show, state, ip, snapshot list), may not attach, take or remove
// the others' volumes, nor cancel the others' operations. Image models,
// hardware models and networks are shared: anyone adds them, only admins
// remove them. Root, the server's user and members of group adminGID
// change anything, and may set or move OwnerLabel; nobody else may. A
// caller whose credentials could not be read is refused. The handlers
// find the caller in the request's context (callerOf).
func (s *Server) ownerGuard(next http.Handler, adminGID int) http.Handler {
	self := uint32(os.Geteuid())
	machines, volumes := wire.Prefix+"/machines", wire.Prefix+"/volumes"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := r.Context().Value(peerKey{}).(*peer)
		if !ok {
			s.refuse(w, &httpError{status: http.StatusForbidden, code: wire.CodeForbidden, msg: "cannot tell who is calling (no peer credentials on the socket)"})
			return
		}
		admin := p.cred.Uid == 0 || p.cred.Uid == self || p.inGroup(adminGID)
		uid := strconv.FormatUint(uint64(p.cred.Uid), 10)
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, &caller{uid: uid, admin: admin, adminGID: adminGID}))
		var err error
		switch {
		case (r.URL.Path == machines || r.URL.Path == volumes) && r.Method == http.MethodPost:
			err = stampOwner(w, r, uid, admin)
		case !admin && sharedChange(r):
			err = &httpError{status: http.StatusForbidden, code: wire.CodeForbidden, msg: fmt.Sprintf("%s %s: only root and %s may remove the shared image models, hardware models and networks", r.Method, r.URL.Path, groupName(adminGID))}
		case strings.HasPrefix(r.URL.Path, volumes+"/") && r.Method == http.MethodDelete:
			err = s.mayUseVolume(r.Context(), strings.TrimPrefix(r.URL.Path, volumes+"/"), "remove")
		case strings.HasPrefix(r.URL.Path, machines+"/") && !admin:
			name, sub, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, machines+"/"), "/")
			if r.Method == http.MethodGet && (sub == "" || sub == "state" || sub == "ip" || sub == "snapshots") {
				break // reading is everyone's
			}
			if err = s.checkOwner(r.Context(), name, uid, adminGID); err == nil && sub == "labels" {
				err = keepOwnerLabel(w, r)
			}
		}
		if err != nil {
			s.refuse(w, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) refuse(w http.ResponseWriter, err error) {
	status, body := errorBody(err)
	writeJSON(w, status, body)
}

// rereadBody reads r's body (at most wire.MaxBody) and gives r a copy of
// it to read again.
func rereadBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, wire.MaxBody))
	if err != nil {
		return nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(data))
	r.ContentLength = int64(len(data))
	return data, nil
}

// stampOwner sets OwnerLabel in a create request to the caller's uid. An
// admin's own OwnerLabel (creating for someone) is kept; anyone else's is
// refused.
func stampOwner(w http.ResponseWriter, r *http.Request, uid string, admin bool) error {
	data, err := rereadBody(w, r)
	if err != nil {
		return err
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(data, &body); err != nil || body == nil {
		return nil // the handler says what is wrong with it
	}
	labels := map[string]string{}
	if raw, ok := body["labels"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &labels); err != nil {
			return nil
		}
	}
	if _, set := labels[OwnerLabel]; set {
		if !admin {
			return &httpError{status: http.StatusForbidden, code: wire.CodeForbidden, msg: fmt.Sprintf("label %s: the server sets it to the machine's creator; only root and the admin group may give it", OwnerLabel)}
		}
		return nil
	}
	labels[OwnerLabel] = uid
	if body["labels"], err = json.Marshal(labels); err != nil {
		return err
	}
	if data, err = json.Marshal(body); err != nil {
		return err
	}
	r.Body = io.NopCloser(bytes.NewReader(data))
	r.ContentLength = int64(len(data))
	return nil
}

// keepOwnerLabel refuses a relabel that sets or removes OwnerLabel.
func keepOwnerLabel(w http.ResponseWriter, r *http.Request) error {
	data, err := rereadBody(w, r)
	if err != nil {
		return err
	}
	var req wire.Relabel
	if json.Unmarshal(data, &req) != nil {
		return nil // the handler says what is wrong with it
	}
	if _, set := req.Set[OwnerLabel]; set || slices.Contains(req.Remove, OwnerLabel) {
		return &httpError{status: http.StatusForbidden, code: wire.CodeForbidden, msg: fmt.Sprintf("label %s: only root and the admin group may change a machine's owner", OwnerLabel)}
	}
	return nil
}

// checkOwner refuses a change to machine name unless uid owns it. A
// machine that does not exist is let through (the handler answers 404).
func (s *Server) checkOwner(ctx context.Context, name, uid string, adminGID int) error {
	m, err := s.srv.FindMachine(ctx, name)
	if errors.Is(err, vmfest.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	info, err := m.Info(ctx)
	if err != nil {
		return err
	}
	owner, ok := info.Labels[OwnerLabel]
	if ok && owner == uid {
		return nil
	}
	who := "root (it has no owner)"
	if ok {
		who = userName(owner)
	}
	return &httpError{status: http.StatusForbidden, code: wire.CodeForbidden,
		msg: fmt.Sprintf("machine %s belongs to %s: only its owner, root or %s may change it", name, who, groupName(adminGID))}
}

// groupName names the admin group for an error.
func groupName(gid int) string {
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return "group " + g.Name
	}
	return "the admin group"
}

// sharedChange reports a request that removes an object every caller
// shares: an image model, a hardware model or a network. Adding one is
// anyone's (PUT /v1/hardware/NAME never replaces a model).
func sharedChange(r *http.Request) bool {
	for _, kind := range []string{"models", "hardware", "networks"} {
		if strings.HasPrefix(r.URL.Path, wire.Prefix+"/"+kind+"/") && r.Method == http.MethodDelete {
			return true
		}
	}
	return false
}

// caller is who sent a request on a socket with owners, as ownerGuard
// judged them.
type caller struct {
	uid      string
	admin    bool
	adminGID int
}

type callerKey struct{}

// callerOf is the caller ownerGuard put in ctx; nil on a server without
// owners.
func callerOf(ctx context.Context) *caller {
	c, _ := ctx.Value(callerKey{}).(*caller)
	return c
}

// mayUseVolume refuses to let a caller who is not an admin attach, take
// or remove (what: the verb for the error) a volume that is not theirs. A
// volume that does not exist is let through (the handler answers 404).
func (s *Server) mayUseVolume(ctx context.Context, name, what string) error {
	c := callerOf(ctx)
	if c == nil || c.admin || name == "" {
		return nil
	}
	v, err := s.srv.Volume(ctx, name)
	if errors.Is(err, vmfest.ErrNotFound) || errors.Is(err, vmfest.ErrInvalid) {
		return nil
	}
	if err != nil {
		return err
	}
	owner, ok := v.Labels[OwnerLabel]
	if ok && owner == c.uid {
		return nil
	}
	who := "root (it has no owner)"
	if ok {
		who = userName(owner)
	}
	return &httpError{status: http.StatusForbidden, code: wire.CodeForbidden,
		msg: fmt.Sprintf("volume %s belongs to %s: only its owner, root or %s may %s it", name, who, groupName(c.adminGID), what)}
}

// mayUseVolumes checks every volume a hardware spec's slots name.
func (s *Server) mayUseVolumes(ctx context.Context, h *spec.Hardware) error {
	if h == nil || callerOf(ctx) == nil {
		return nil
	}
	for _, c := range h.Storage {
		for _, d := range c.Devices {
			if d == nil || d.Volume == "" {
				continue
			}
			if err := s.mayUseVolume(ctx, d.Volume, "attach"); err != nil {
				return err
			}
		}
	}
	return nil
}

// userName is uid's login name with the uid, or the uid alone.
func userName(uid string) string {
	if u, err := user.LookupId(uid); err == nil {
		return fmt.Sprintf("%s (uid %s)", u.Username, uid)
	}
	return "uid " + uid
}

// mayUseHardwareVolumes checks the volumes in a create request's hardware:
// its spec, or the hardware model it names.
func (s *Server) mayUseHardwareVolumes(ctx context.Context, hc wire.HardwareChoice) error {
	if callerOf(ctx) == nil {
		return nil
	}
	if hc.Spec != nil {
		return s.mayUseVolumes(ctx, hc.Spec)
	}
	if hc.Model == "" {
		return nil
	}
	h, err := s.srv.HardwareModel(ctx, hc.Model)
	if err != nil {
		return nil // Instance says what is wrong with the name
	}
	return s.mayUseVolumes(ctx, &h)
}
