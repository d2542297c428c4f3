package image

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"olympos.io/encoding/edn"
	"sigs.k8s.io/yaml"

	"github.com/vmfest/vmfest/spec"
)

// vmfestOnlyKeys are keys of VMFest's .meta files that mean nothing here
// (VirtualBox's OS type, the medium's path or uuid, pallet's sudo and
// packager settings, the model's own name). They are dropped, not refused.
var vmfestOnlyKeys = map[string]bool{
	"os-type-id": true, "uuid": true, "location": true, "sudo-password": true, "no-sudo": true,
	"packager": true, "image-name": true, "image-id": true, "immutable": true,
}

// ParseMeta reads image metadata: an image spec in JSON or YAML (VMFest's
// keys), or a VMFest .meta file, which is a Clojure map in EDN such as
// {:os-family :ubuntu :os-version "12.04" :username "vmfest"}. EDN is read
// as data by an EDN reader, never evaluated; keywords become strings, and
// a map holding one map under the model's name ({:my-model {...}}, as
// VMFest wrote installed models) is unwrapped. The image's location
// (location, or uuid) is ignored: the model's disk is what was downloaded.
// Unknown keys are errors. A document nested more than MaxMetaDepth
// levels deep, or larger than 1 MiB, is refused before it is decoded.
func ParseMeta(data []byte) (spec.Image, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return spec.Image{}, fmt.Errorf("%w: empty document", ErrMeta)
	}
	if len(data) > maxMetaDocument {
		return spec.Image{}, fmt.Errorf("%w: the document is %d bytes, more than the limit of %d", ErrMeta, len(data), maxMetaDocument)
	}
	if isEDN(data) {
		if d := ednDepth(data); d > MaxMetaDepth {
			return spec.Image{}, fmt.Errorf("%w: EDN: nested %d levels deep, more than the limit of %d", ErrMeta, d, MaxMetaDepth)
		}
		return parseEDNMeta(data)
	}
	if d := yamlDepth(data); d > MaxMetaDepth {
		return spec.Image{}, fmt.Errorf("%w: nested %d levels deep, more than the limit of %d", ErrMeta, d, MaxMetaDepth)
	}
	var probe map[string]any
	if err := json.Unmarshal(data, &probe); err == nil {
		data, err = json.Marshal(dropKeys(probe))
		if err != nil {
			return spec.Image{}, fmt.Errorf("%w: %v", ErrMeta, err)
		}
	} else if m, yerr := yamlMap(data); yerr == nil {
		data, err = json.Marshal(dropKeys(m))
		if err != nil {
			return spec.Image{}, fmt.Errorf("%w: %v", ErrMeta, err)
		}
	}
	im, err := spec.ParseImage(data)
	if err != nil {
		return spec.Image{}, fmt.Errorf("%w: %w", ErrMeta, err)
	}
	return im, nil
}

// maxMetaDocument bounds a metadata document ParseMeta reads (a sidecar
// fetched by Prepare is bounded further, by Config.MaxSidecar).
const maxMetaDocument = 1 << 20

// isEDN says the document is an EDN map: it opens with '{' (or a ';'
// comment) and its first key is a keyword, where JSON would have a string.
func isEDN(data []byte) bool {
	s := strings.TrimSpace(string(data))
	for strings.HasPrefix(s, ";") {
		_, rest, _ := strings.Cut(s, "\n")
		s = strings.TrimSpace(rest)
	}
	if !strings.HasPrefix(s, "{") {
		return false
	}
	s = strings.TrimLeft(s[1:], " \t\r\n,")
	return strings.HasPrefix(s, ":") || strings.HasPrefix(s, "}")
}

func parseEDNMeta(data []byte) (spec.Image, error) {
	var v any
	if err := edn.Unmarshal(data, &v); err != nil {
		return spec.Image{}, fmt.Errorf("%w: EDN: %v", ErrMeta, err)
	}
	g, err := fromEDN(v)
	if err != nil {
		return spec.Image{}, fmt.Errorf("%w: EDN: %v", ErrMeta, err)
	}
	m, ok := g.(map[string]any)
	if !ok {
		return spec.Image{}, fmt.Errorf("%w: EDN: want a map such as {:os-family :debian}, got %T", ErrMeta, v)
	}
	// {:model-name {...}}: VMFest's installed-model form.
	if len(m) == 1 {
		for k, inner := range m {
			if im, ok := inner.(map[string]any); ok && !knownImageKey(k) {
				m = im
			}
		}
	}
	js, err := json.Marshal(dropKeys(m))
	if err != nil {
		return spec.Image{}, fmt.Errorf("%w: EDN: %v", ErrMeta, err)
	}
	im, err := spec.ParseImage(js)
	if err != nil {
		return spec.Image{}, fmt.Errorf("%w: %w", ErrMeta, err)
	}
	return im, nil
}

func knownImageKey(k string) bool {
	switch k {
	case "os-family", "os-version", "os-64-bit", "username", "password", "description", "cloud-init", "hardware":
		return true
	}
	return vmfestOnlyKeys[k]
}

// fromEDN turns decoded EDN into JSON-shaped data: keywords and symbols
// become strings (without the colon), maps get string keys, sets become
// sorted lists.
func fromEDN(v any) (any, error) {
	switch x := v.(type) {
	case nil, bool, string, int64, float64, int, float32:
		return x, nil
	case edn.Keyword:
		return string(x), nil
	case edn.Symbol:
		return string(x), nil
	case edn.Rune:
		return string(rune(x)), nil
	case time.Time:
		return x.Format(time.RFC3339Nano), nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			g, err := fromEDN(e)
			if err != nil {
				return nil, err
			}
			out[i] = g
		}
		return out, nil
	case map[any]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			key, err := fromEDN(k)
			if err != nil {
				return nil, err
			}
			ks, ok := key.(string)
			if !ok {
				return nil, fmt.Errorf("map key %v: want a keyword or a string", k)
			}
			g, err := fromEDN(e)
			if err != nil {
				return nil, err
			}
			out[ks] = g
		}
		return out, nil
	case map[any]bool:
		var out []string
		for k := range x {
			g, err := fromEDN(k)
			if err != nil {
				return nil, err
			}
			s, ok := g.(string)
			if !ok {
				return nil, fmt.Errorf("set element %v: want a keyword or a string", k)
			}
			out = append(out, s)
		}
		sort.Strings(out)
		res := make([]any, len(out))
		for i, s := range out {
			res[i] = s
		}
		return res, nil
	}
	return nil, fmt.Errorf("value %v (%T) is not plain data", v, v)
}

func dropKeys(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if !vmfestOnlyKeys[k] {
			out[k] = v
		}
	}
	return out
}

// yamlMap reads a YAML mapping.
func yamlMap(data []byte) (map[string]any, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(js))
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}

// Merge lays the non-empty fields of over onto base. A true os-64-bit or
// cloud-init in over sets them; false leaves base's.
func Merge(base, over spec.Image) spec.Image {
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&base.OSFamily, over.OSFamily)
	set(&base.OSVersion, over.OSVersion)
	set(&base.Username, over.Username)
	set(&base.Password, over.Password)
	set(&base.Description, over.Description)
	base.OS64Bit = base.OS64Bit || over.OS64Bit
	base.CloudInit = base.CloudInit || over.CloudInit
	if over.Hardware != nil {
		base.Hardware = over.Hardware
	}
	return base
}
