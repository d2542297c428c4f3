package vmfest

import (
	"context"
	"net/http"

	"github.com/vmfest/vmfest/api/wire"
)

// Clone implements Machine: the server makes the clone (and, of a saved,
// running or paused machine, starts and re-identifies it) within the
// request. An error of a clone that was made but not started or not
// re-identified comes back as the local one does, with the clone.
func (m *remoteMachine) Clone(ctx context.Context, name string) (Machine, error) {
	if err := checkName("machine", name); err != nil {
		return nil, err
	}
	var out wire.CloneResult
	err := m.r.call(ctx, http.MethodPost, m.path("/clone"), wire.CloneRequest{Name: name}, &out)
	if err != nil {
		return nil, err
	}
	c := &remoteMachine{r: m.r, name: out.Name}
	if out.Error != "" {
		return c, &remoteCloneError{msg: out.Error, reidentify: out.NotReidentified}
	}
	return c, nil
}

// remoteCloneError is a server's error of a clone that was made.
type remoteCloneError struct {
	msg        string
	reidentify bool
}

func (e *remoteCloneError) Error() string { return e.msg }

func (e *remoteCloneError) Is(target error) bool {
	return e.reidentify && target == ErrNotReidentified
}
