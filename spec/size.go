package spec

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Size is a size in bytes, written as bytes or with a binary unit suffix:
// 512M, 20G, 1T (K, M, G, T: powers of 1024; a trailing B or iB is
// accepted, as in 20GiB).
type Size int64

var sizeUnits = []struct {
	suffix string
	shift  uint
}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}}

// ParseSize reads a size: a number of bytes, or a number with K, M, G or T.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(strings.TrimSuffix(u, "IB"), "B")
	shift := uint(0)
	for _, unit := range sizeUnits {
		if strings.HasSuffix(u, unit.suffix) {
			u, shift = strings.TrimSuffix(u, unit.suffix), unit.shift
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(u), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size: write bytes or a whole number with K, M, G or T (512M, 20G, 1T)", s)
	}
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return Size(n << shift), nil
}

// String writes the size with the largest unit that divides it exactly.
func (s Size) String() string {
	for _, unit := range sizeUnits {
		if s > 0 && s%(1<<unit.shift) == 0 {
			return strconv.FormatInt(int64(s)>>unit.shift, 10) + unit.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// MarshalJSON writes the size as String does ("20G"), or 0.
func (s Size) MarshalJSON() ([]byte, error) {
	if s == 0 {
		return []byte("0"), nil
	}
	return json.Marshal(s.String())
}

// UnmarshalJSON reads a number of bytes or a string ParseSize reads.
func (s *Size) UnmarshalJSON(data []byte) error {
	var n int64
	if err := json.Unmarshal(data, &n); err == nil {
		if n < 0 {
			return fmt.Errorf("%w: size %d: must not be negative", ErrInvalid, n)
		}
		*s = Size(n)
		return nil
	}
	var str string
	if err := json.Unmarshal(data, &str); err != nil {
		return fmt.Errorf("%w: a size is a number of bytes or a string like \"20G\", not %s", ErrInvalid, data)
	}
	v, err := ParseSize(str)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	*s = v
	return nil
}
