package vmfest

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"sort"
	"strings"
)

var (
	labelKey   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$`)
	labelValue = regexp.MustCompile(`^[A-Za-z0-9._:/@+-]{0,255}$`)
)

// MaxLabels is the most labels a machine carries.
const MaxLabels = 64

// CheckLabels checks labels: keys of 1-63 letters, digits, '.', '_', '/'
// and '-' that start and end with a letter or digit; values of up to 255
// letters, digits and ._:/@+- (empty allowed). The error wraps ErrInvalid
// and names the label.
func CheckLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%w: labels: %d, more than the %d allowed", ErrInvalid, len(labels), MaxLabels)
	}
	for _, k := range sortedKeys(labels) {
		if !labelKey.MatchString(k) {
			return fmt.Errorf("%w: label %q: a key is 1-63 letters, digits, '.', '_', '/' or '-', starting and ending with a letter or digit", ErrInvalid, k)
		}
		if !labelValue.MatchString(labels[k]) {
			return fmt.Errorf("%w: label %s=%q: a value is up to 255 letters, digits and ._:/@+-", ErrInvalid, k, labels[k])
		}
	}
	return nil
}

// ParseLabel reads key=value; with removable, a key followed by '-'
// (key-) is a removal, returned with remove set.
func ParseLabel(s string, removable bool) (key, value string, remove bool, err error) {
	if k, v, ok := strings.Cut(s, "="); ok {
		return k, v, false, CheckLabels(map[string]string{k: v})
	}
	if k, ok := strings.CutSuffix(s, "-"); ok && removable && k != "" {
		return k, "", true, CheckLabels(map[string]string{k: ""})
	}
	want := "key=value"
	if removable {
		want += " (or key- to remove it)"
	}
	return "", "", false, fmt.Errorf("%w: label %q: write %s", ErrInvalid, s, want)
}

// HasLabels says whether have holds every key=value of want.
func HasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Relabel implements Machine.
func (m *localMachine) Relabel(ctx context.Context, set map[string]string, remove []string) error {
	if err := CheckLabels(set); err != nil {
		return err
	}
	for _, k := range remove {
		if err := CheckLabels(map[string]string{k: ""}); err != nil {
			return err
		}
		if _, ok := set[k]; ok {
			return fmt.Errorf("%w: label %s: both set and removed", ErrInvalid, k)
		}
	}
	return m.locked(ctx, func(r record, st State) error {
		labels := maps.Clone(r.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		maps.Copy(labels, set)
		for _, k := range remove {
			delete(labels, k)
		}
		if err := CheckLabels(labels); err != nil {
			return err
		}
		if len(labels) == 0 {
			labels = nil
		}
		r.Labels = labels
		if err := writeRecord(m.dir(), r); err != nil {
			return fmt.Errorf("label machine %s: %w", m.name, err)
		}
		return nil
	})
}
