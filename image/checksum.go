package image

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
)

// NormalizeSHA256 checks a hex sha256 digest (64 hex digits, an optional
// "sha256:" prefix) and returns it in lower case.
func NormalizeSHA256(s string) (string, error) {
	d := strings.ToLower(strings.TrimSpace(s))
	d = strings.TrimPrefix(d, "sha256:")
	if b, err := hex.DecodeString(d); err != nil || len(b) != 32 {
		return "", fmt.Errorf("sha256 %q: want 64 hexadecimal digits", s)
	}
	return d, nil
}

// findSum finds the digest of the file name in a checksum file: lines of
// sha256sum ("DIGEST  NAME", "DIGEST *NAME") or BSD ("SHA256 (NAME) =
// DIGEST") form. When bare is true, a file holding only a digest matches
// any name (a .sha256 beside one file).
func findSum(data []byte, name string, bare bool) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	var lines []string
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	for _, l := range lines {
		if rest, ok := strings.CutPrefix(l, "SHA256 ("); ok {
			file, digest, ok := strings.Cut(rest, ") = ")
			if ok && file == name {
				if d, err := NormalizeSHA256(digest); err == nil {
					return d, true
				}
			}
			continue
		}
		fields := strings.Fields(l)
		if len(fields) == 2 && strings.TrimPrefix(fields[1], "*") == name {
			if d, err := NormalizeSHA256(fields[0]); err == nil {
				return d, true
			}
		}
	}
	if bare && len(lines) == 1 && len(strings.Fields(lines[0])) == 1 {
		if d, err := NormalizeSHA256(lines[0]); err == nil {
			return d, true
		}
	}
	return "", false
}
