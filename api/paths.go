package api

import (
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
// --allow-path directories. A path is checked as written, then again after
// its symlinks are resolved, and the resolved path is what the Local server
// gets, so a link inside an allowed directory cannot point outside it.
type pathPolicy struct {
	models string   // resolved image-model directory, or ""
	dirs   []string // resolved allowed directories
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
	}
	for _, d := range allow {
		real, err := resolveDir(d)
		if err != nil {
			return nil, fmt.Errorf("--allow-path: %w", err)
		}
		p.dirs = append(p.dirs, real)
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

func (pp *pathPolicy) forbidden(field, p string) error {
	where := "the image models directory"
	if len(pp.dirs) > 0 {
		where += " or " + strings.Join(pp.dirs, ", ")
	}
	return &httpError{status: http.StatusForbidden, code: wire.CodeForbidden,
		msg: fmt.Sprintf("%s %q: a remote caller may only name files inside %s (the server's --allow-path)", field, p, where)}
}

// check returns the resolved path of p if a remote caller may name it.
// immutable says whether the file will be used read-only.
func (pp *pathPolicy) check(field, p string, immutable bool) (string, error) {
	switch {
	case p == "":
		return "", badRequest("%s: empty; give an absolute path on the server", field)
	case strings.ContainsRune(p, 0):
		return "", badRequest("%s: contains a NUL byte", field)
	case !filepath.IsAbs(p):
		return "", badRequest("%s %q: give an absolute path on the server", field, p)
	}
	clean := filepath.Clean(p)
	if ok, _ := pp.allowed(clean); !ok {
		return "", pp.forbidden(field, p)
	}
	real, err := filepath.EvalSymlinks(clean)
	if errors.Is(err, fs.ErrNotExist) {
		return "", badRequest("%s %s: no such file", field, p)
	}
	if err != nil {
		return "", badRequest("%s %s: %v", field, p, err)
	}
	ok, inModels := pp.allowed(real)
	if !ok {
		return "", pp.forbidden(field, p)
	}
	if inModels && !immutable {
		return "", &httpError{status: http.StatusForbidden, code: wire.CodeForbidden,
			msg: fmt.Sprintf("%s %q: an image model's disk may only be used as an immutable image (a mutable image is deleted with its machine)", field, p)}
	}
	return real, nil
}
