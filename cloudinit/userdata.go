package cloudinit

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"

	"sigs.k8s.io/yaml"
)

// MaxUserData is the largest user-data accepted.
const MaxUserData = 1 << 20

// ErrUserData is wrapped by every refusal of a user-data.
var ErrUserData = errors.New("invalid user-data")

// The user-data formats cloud-init reads, by first line, and the MIME type
// each part has in a multipart user-data.
var userDataKinds = []struct{ prefix, mimeType string }{
	{"#cloud-config-archive", "text/cloud-config-archive"},
	{"#cloud-config", "text/cloud-config"},
	{"#cloud-boothook", "text/cloud-boothook"},
	{"#include-once", "text/x-include-once-url"},
	{"#include", "text/x-include-url"},
	{"#part-handler", "text/part-handler"},
	{"## template: jinja", "text/jinja2"},
	{"#!", "text/x-shellscript"},
}

// CheckUserData checks a user's user-data as cloud-init would read it and
// returns its MIME type: a #cloud-config must be a YAML mapping, a MIME
// multipart must parse, and the first line must be one cloud-init knows.
// A refusal names the line and the reason.
func CheckUserData(data []byte) (string, error) {
	if len(data) == 0 {
		return "", fmt.Errorf("%w: it is empty", ErrUserData)
	}
	if len(data) > MaxUserData {
		return "", fmt.Errorf("%w: %d bytes, more than the %d allowed", ErrUserData, len(data), MaxUserData)
	}
	first, _, _ := bytes.Cut(data, []byte("\n"))
	line := strings.TrimRight(string(first), "\r \t")
	if isMIME(line) {
		if err := checkMultipart(data); err != nil {
			return "", fmt.Errorf("%w: a MIME multipart that does not parse: %w", ErrUserData, err)
		}
		return "multipart/mixed", nil
	}
	for _, k := range userDataKinds {
		if !strings.HasPrefix(line, k.prefix) {
			continue
		}
		if k.prefix == "#cloud-config" {
			var v any
			if err := yaml.Unmarshal(data, &v); err != nil {
				return "", fmt.Errorf("%w: #cloud-config is not YAML: %w", ErrUserData, err)
			}
			if _, ok := v.(map[string]any); !ok && v != nil {
				return "", fmt.Errorf("%w: #cloud-config must be a YAML mapping of keys (hostname:, packages:, runcmd:, ...), not a %T", ErrUserData, v)
			}
		}
		return k.mimeType, nil
	}
	return "", fmt.Errorf("%w: line 1: %q is not a format cloud-init reads; allowed first lines: #cloud-config, #! (a script), Content-Type: multipart/... (MIME), #include, #cloud-boothook, #part-handler, ## template: jinja", ErrUserData, truncate(line, 40))
}

func isMIME(line string) bool {
	l := strings.ToLower(line)
	return strings.HasPrefix(l, "content-type:") || strings.HasPrefix(l, "mime-version:")
}

func checkMultipart(data []byte) error {
	msg, err := mail.ReadMessage(bufio.NewReader(bytes.NewReader(data)))
	if err != nil {
		return err
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		return fmt.Errorf("Content-Type: %w", err)
	}
	if !strings.HasPrefix(mt, "multipart/") {
		return fmt.Errorf("Content-Type %s: want multipart/mixed", mt)
	}
	r := multipart.NewReader(msg.Body, params["boundary"])
	parts := 0
	for {
		p, err := r.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("part %d: %w", parts+1, err)
		}
		if _, err := io.Copy(io.Discard, p); err != nil {
			return fmt.Errorf("part %d: %w", parts+1, err)
		}
		parts++
	}
	if parts == 0 {
		return errors.New("no parts")
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// vmfestMergeType makes vmfest's own #cloud-config part merge into the
// user's without replacing anything the user set, appending to lists (its
// key beside the user's keys).
const vmfestMergeType = "list(append)+dict(no_replace,recurse_list)+str()"

// combine is the user-data of a seed with a user's user-data: a MIME
// multipart whose first part is the user's, kept whole, and whose second
// is vmfest's #cloud-config, merged into it without replacing the user's
// values.
func combine(userData []byte, mimeType string, own []byte) ([]byte, error) {
	var boundary string
	for {
		var b [12]byte
		rand.Read(b[:])
		boundary = "vmfest-" + hex.EncodeToString(b[:])
		if !bytes.Contains(userData, []byte(boundary)) && !bytes.Contains(own, []byte(boundary)) {
			break
		}
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "Content-Type: multipart/mixed; boundary=\"%s\"\nMIME-Version: 1.0\n\n", boundary)
	fmt.Fprintf(&out, "--%s\n", boundary)
	if mimeType == "multipart/mixed" {
		// The user's own multipart, headers and all, as a nested part.
		out.Write(userData)
	} else {
		fmt.Fprintf(&out, "Content-Type: %s; charset=\"utf-8\"\nContent-Disposition: attachment; filename=\"user-data\"\n\n", mimeType)
		out.Write(userData)
	}
	if !bytes.HasSuffix(userData, []byte("\n")) {
		out.WriteByte('\n')
	}
	fmt.Fprintf(&out, "--%s\n", boundary)
	fmt.Fprintf(&out, "Content-Type: text/cloud-config; charset=\"utf-8\"\nContent-Disposition: attachment; filename=\"vmfest.cfg\"\nMerge-Type: %s\n\n", vmfestMergeType)
	out.Write(own)
	fmt.Fprintf(&out, "--%s--\n", boundary)
	return out.Bytes(), nil
}
