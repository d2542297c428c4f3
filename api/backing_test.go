package api

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/spec"
)

// TestRefusedBackingFileThroughAPI: a caller's qcow2 that names a backing
// file (here outside the allowed directories) is refused as bad input,
// not answered as an internal error.
func TestRefusedBackingFileThroughAPI(t *testing.T) {
	e := newEnv(t)
	secret := filepath.Join(t.TempDir(), "secret.raw")
	if err := os.WriteFile(secret, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(e.allowed, "evil.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", evil).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	for _, immutable := range []bool{true, false} {
		name := fmt.Sprintf("evil%v", immutable)
		status, body := e.do(t, "POST", "/v1/machines", createBody(name, spec.Image{Location: evil, Immutable: immutable}))
		we := decodeError(t, body)
		if (status != http.StatusBadRequest && status != http.StatusUnprocessableEntity) || we.Code != wire.CodeInvalid {
			t.Errorf("create (immutable %v): %d %+v, want 400 or 422 invalid", immutable, status, we)
		}
		if e.machineExists(t, name) {
			t.Errorf("machine %s was created", name)
		}
	}
}
