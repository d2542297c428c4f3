package api

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/store"
)

// pathPolicy decides which host paths a remote caller may name: disk
// images inside the image-model directory (immutable only: a mutable image
// is deleted with its machine) and anything inside the operator's
// --allow-path directories. A path is checked as written (cleaned, against
// the directories as given and resolved), then again once the kernel's
// reading of it is known: its symlinks resolved and each ".." applied to
// what the link before it points to. The resolved path is what the Local
// server gets, so neither a link nor a ".." inside an allowed directory
// leads outside it.
type pathPolicy struct {
	models      string   // resolved image-model directory, or ""
	dirs        []string // resolved allowed directories
	modelsGiven string   // the image-model directory as given, absolute and clean
	given       []string // the allowed directories as given, absolute and clean
}

func newPathPolicy(home string, allow []string) (*pathPolicy, error) {
	p := &pathPolicy{}
	if home != "" {
		dir := filepath.Join(home, store.ModelsDir, store.ImageModelsDir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("image models directory: %w", err)
		}
		real, err := resolveDir(dir)
		if err != nil {
			return nil, err
		}
		p.models = real
		p.modelsGiven, _ = filepath.Abs(dir)
	}
	for _, d := range allow {
		real, err := resolveDir(d)
		if err != nil {
			return nil, fmt.Errorf("--allow-path: %w", err)
		}
		p.dirs = append(p.dirs, real)
		abs, _ := filepath.Abs(d)
		p.given = append(p.given, abs)
	}
	return p, nil
}

func resolveDir(d string) (string, error) {
	abs, err := filepath.Abs(d)
	if err != nil {
		return "", fmt.Errorf("%s: %w", d, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("%s: %w", d, err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("%s: %w", d, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%s: not a directory", d)
	}
	return real, nil
}

// within reports whether p is strictly inside dir (both clean and absolute).
func within(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

// allowed reports whether p may be used, and whether it is in the models
// directory.
func (pp *pathPolicy) allowed(p string) (ok, inModels bool) {
	for _, d := range pp.dirs {
		if within(d, p) {
			return true, false
		}
	}
	if pp.models != "" && within(pp.models, p) {
		return true, true
	}
	return false, false
}

// allowedAsGiven reports whether p is inside a directory as the operator
// named it (before its symlinks were resolved).
func (pp *pathPolicy) allowedAsGiven(p string) bool {
	for _, d := range pp.given {
		if within(d, p) {
			return true
		}
	}
	return pp.modelsGiven != "" && within(pp.modelsGiven, p)
}

func (pp *pathPolicy) forbidden(field, p string) error {
	where := "the image models directory"
	if len(pp.dirs) > 0 {
		where += " or " + strings.Join(pp.dirs, ", ")
	}
	return &httpError{status: http.StatusForbidden, code: wire.CodeForbidden,
		msg: fmt.Sprintf("%s %q: a remote caller may only name files inside %s (the server's --allow-path)", field, p, where)}
}

// check returns the resolved path of p if the caller of ctx may name it:
// a remote caller only inside the allowed directories; this host's user
// (root or the server's own user on the Unix socket: LocalHandler) any
// file, as the CLI without a server would. immutable says whether the
// file will be used read-only.
func (pp *pathPolicy) check(ctx context.Context, field, p string, immutable bool) (string, error) {
	local := isLocal(ctx)
	switch {
	case p == "":
		return "", badRequest("%s: empty; give an absolute path on the server", field)
	case strings.ContainsRune(p, 0):
		return "", badRequest("%s: contains a NUL byte", field)
	case !filepath.IsAbs(p):
		return "", badRequest("%s %q: give an absolute path on the server", field, p)
	}
	// As written: nothing outside is even looked at.
	clean := filepath.Clean(p)
	if ok, _ := pp.allowed(clean); !ok && !pp.allowedAsGiven(clean) && !local {
		return "", pp.forbidden(field, p)
	}
	// As the kernel reads it: EvalSymlinks of the path as written (not of
	// its lexically cleaned form) applies a ".." after a link to the link's
	// target, as open(2) does.
	real, err := filepath.EvalSymlinks(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", badRequest("%s %s: no such file", field, p)
	}
	if err != nil {
		return "", badRequest("%s %s: %v", field, p, err)
	}
	ok, inModels := pp.allowed(real)
	if !ok && !local {
		return "", pp.forbidden(field, p)
	}
	if inModels && !immutable {
		return "", &httpError{status: http.StatusForbidden, code: wire.CodeForbidden,
			msg: fmt.Sprintf("%s %q: an image model's disk may only be used as an immutable image (a mutable image is deleted with its machine)", field, p)}
	}
	return real, nil
}
