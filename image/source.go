package image

import (
	"fmt"
	"net/url"
	"path"
	"path/filepath"
	"strings"

	"github.com/vmfest/vmfest/store"
)

// Source is where an image comes from: an http or https URL, or a local
// file (a file:// URL or a plain path).
type Source struct {
	// URL is set for http and https sources.
	URL *url.URL
	// Path is the absolute path of a local source.
	Path string
}

// ParseSource reads an http://, https:// or file:// URL, or a plain path.
func ParseSource(s string) (Source, error) {
	if strings.TrimSpace(s) == "" {
		return Source{}, fmt.Errorf("%w: source: give a URL (http, https, file) or a path", ErrSource)
	}
	if i := strings.Index(s, "://"); i > 0 {
		u, err := url.Parse(s)
		if err != nil {
			return Source{}, fmt.Errorf("%w: source %q: %v", ErrSource, s, err)
		}
		switch strings.ToLower(u.Scheme) {
		case "http", "https":
			if u.Host == "" {
				return Source{}, fmt.Errorf("%w: source %q: the URL has no host", ErrSource, s)
			}
			if path.Base(u.Path) == "/" || path.Base(u.Path) == "." || strings.HasSuffix(u.Path, "/") {
				return Source{}, fmt.Errorf("%w: source %q: the URL names no file", ErrSource, s)
			}
			return Source{URL: u}, nil
		case "file":
			if u.Host != "" && u.Host != "localhost" {
				return Source{}, fmt.Errorf("%w: source %q: a file URL must be file:///absolute/path", ErrSource, s)
			}
			return Source{Path: filepath.Clean(u.Path)}, nil
		default:
			return Source{}, fmt.Errorf("%w: source %q: scheme %q is not supported (use http, https, file or a path)", ErrSource, s, u.Scheme)
		}
	}
	abs, err := filepath.Abs(s)
	if err != nil {
		return Source{}, fmt.Errorf("%w: source %q: %v", ErrSource, s, err)
	}
	return Source{Path: abs}, nil
}

// Remote says the source is fetched over HTTP.
func (s Source) Remote() bool { return s.URL != nil }

// String is the canonical form: the URL, or the absolute path.
func (s Source) String() string {
	if s.URL != nil {
		return s.URL.String()
	}
	return s.Path
}

// Name is the source's file name.
func (s Source) Name() string {
	if s.URL != nil {
		return path.Base(s.URL.Path)
	}
	return filepath.Base(s.Path)
}

// Sibling is the file named name in the same directory as the source.
func (s Source) Sibling(name string) Source {
	if s.URL != nil {
		u := *s.URL
		u.Path = path.Join(path.Dir(u.Path), name)
		u.RawPath = ""
		u.RawQuery = ""
		u.Fragment = ""
		return Source{URL: &u}
	}
	return Source{Path: filepath.Join(filepath.Dir(s.Path), name)}
}

// compressionSuffixes and formatSuffixes are dropped, in that order, from a
// file name to make a model id (VMFest dropped .gz, then the extension).
var (
	compressionSuffixes = []string{".gz", ".gzip", ".xz", ".zst", ".zstd", ".bz2"}
	formatSuffixes      = []string{".qcow2", ".qcow", ".img", ".raw", ".vdi", ".vmdk", ".vhd", ".vhdx", ".box", ".ova", ".tar"}
)

// Stem is a file name without its compression suffix and then its format
// suffix: debian-6.0.2.1-64bit-v0.3.vdi.gz → debian-6.0.2.1-64bit-v0.3.
// Only known suffixes are dropped, so ubuntu-12.04 stays whole. A .tgz is
// read as .tar.gz.
func Stem(name string) string {
	lower := strings.ToLower(name)
	if strings.HasSuffix(lower, ".tgz") {
		return name[:len(name)-len(".tgz")]
	}
	for _, suf := range compressionSuffixes {
		if strings.HasSuffix(lower, suf) && len(name) > len(suf) {
			name, lower = name[:len(name)-len(suf)], lower[:len(lower)-len(suf)]
			break
		}
	}
	for _, suf := range formatSuffixes {
		if strings.HasSuffix(lower, suf) && len(name) > len(suf) {
			name = name[:len(name)-len(suf)]
			break
		}
	}
	return name
}

// ModelID is the id a model installed from source gets: id when given,
// else the stem of the source's file name. Either way it is validated.
func ModelID(source Source, id string) (string, error) {
	if id != "" {
		if err := store.ValidateName("image model", id); err != nil {
			return "", err
		}
		return id, nil
	}
	derived := Stem(source.Name())
	if err := store.ValidateName("image model", derived); err != nil {
		return "", fmt.Errorf("%w (derived from the file name %q; give one with --id)", err, source.Name())
	}
	return derived, nil
}
