package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"sigs.k8s.io/yaml"
)

// ParseHardware reads a hardware spec from YAML or JSON. Unknown keys are
// errors. Defaults are not applied and nothing is validated beyond types;
// call WithDefaults and Validate for that.
func ParseHardware(data []byte) (Hardware, error) {
	var h Hardware
	if err := decodeStrict(data, &h); err != nil {
		return Hardware{}, fmt.Errorf("hardware spec: %w", err)
	}
	return h, nil
}

// ParseImage reads an image spec from YAML or JSON. Unknown keys are errors;
// uuid is read as location.
func ParseImage(data []byte) (Image, error) {
	var im Image
	if err := decodeStrict(data, &im); err != nil {
		return Image{}, fmt.Errorf("image spec: %w", err)
	}
	return im, nil
}

// MarshalYAML renders v (a Hardware or Image) as YAML with VMFest's keys.
func MarshalYAML(v any) ([]byte, error) { return yaml.Marshal(v) }

var unknownField = regexp.MustCompile(`unknown field "([^"]*)"`)

// decodeStrict converts YAML (a superset of JSON) to JSON and decodes it with
// unknown keys refused, rewording the decoder's errors for users.
func decodeStrict(data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return errors.New("empty document")
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return fmt.Errorf("not valid YAML or JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if m := unknownField.FindStringSubmatch(err.Error()); m != nil {
			return fmt.Errorf("%w: unknown key %q", ErrInvalid, m[1])
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%w: %s: want a %s, got a %s", ErrInvalid, te.Field, te.Type, te.Value)
		}
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}
