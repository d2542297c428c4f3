package cloudinit

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
)

func TestCheckUserData(t *testing.T) {
	multi := "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n--XX\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n--XX--\n"
	for _, c := range []struct {
		name, data, mime, says string
	}{
		{"cloud-config", "#cloud-config\nruncmd: [touch /x]\n", "text/cloud-config", ""},
		{"empty cloud-config", "#cloud-config\n", "text/cloud-config", ""},
		{"script", "#!/bin/sh\necho hi\n", "text/x-shellscript", ""},
		{"multipart", multi, "multipart/mixed", ""},
		{"boothook", "#cloud-boothook\necho\n", "text/cloud-boothook", ""},
		{"not yaml", "#cloud-config\nruncmd: [unclosed\n", "", "#cloud-config is not YAML"},
		{"a list", "#cloud-config\n- a\n- b\n", "", "must be a YAML mapping"},
		{"unknown first line", "hello\n", "", `line 1: "hello" is not a format cloud-init reads`},
		{"broken multipart", "Content-Type: multipart/mixed; boundary=\"XX\"\n\nno parts here\n", "", "a MIME multipart that does not parse"},
		{"empty", "", "", "it is empty"},
		{"too large", "#!/bin/sh\n" + strings.Repeat("#", MaxUserData), "", "more than the"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := CheckUserData([]byte(c.data))
			if c.says == "" {
				if err != nil || got != c.mime {
					t.Fatalf("= %q, %v; want %q", got, err, c.mime)
				}
				return
			}
			if !errors.Is(err, ErrUserData) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("err = %v, want one saying %q", err, c.says)
			}
		})
	}
}

// TestSeedWithUserData: the seed's user-data is a multipart whose first
// part is the user's, byte for byte, and whose second is vmfest's
// #cloud-config with a merge type that replaces nothing of the user's.
func TestSeedWithUserData(t *testing.T) {
	user := []byte("#cloud-config\nwrite_files:\n  - path: /etc/hello\n    content: hi\nruncmd: [touch /tmp/ran]\n")
	files, err := Seed{InstanceID: "i1", Hostname: "web", User: "debian", AuthorizedKeys: []string{"ssh-ed25519 AAAA vmfest"}, UserData: user}.Files()
	if err != nil {
		t.Fatal(err)
	}
	msg, err := mail.ReadMessage(bufio.NewReader(bytes.NewReader(files["user-data"])))
	if err != nil {
		t.Fatal(err)
	}
	_, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	r := multipart.NewReader(msg.Body, params["boundary"])
	var parts [][]byte
	var headers []string
	for {
		p, err := r.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(p)
		parts = append(parts, data)
		headers = append(headers, p.Header.Get("Content-Type")+" | "+p.Header.Get("Merge-Type"))
	}
	if len(parts) != 2 {
		t.Fatalf("%d parts, want 2:\n%s", len(parts), files["user-data"])
	}
	if !bytes.Equal(bytes.TrimRight(parts[0], "\n"), bytes.TrimRight(user, "\n")) {
		t.Errorf("the user's part changed:\n%s", parts[0])
	}
	if !strings.HasPrefix(headers[0], "text/cloud-config") {
		t.Errorf("user's part header %q", headers[0])
	}
	if !strings.Contains(headers[1], "no_replace") || !strings.Contains(string(parts[1]), "ssh-ed25519 AAAA vmfest") || !strings.Contains(string(parts[1]), `"hostname": "web"`) {
		t.Errorf("vmfest's part: %q\n%s", headers[1], parts[1])
	}
	// A refused user-data makes no seed.
	if _, err := (Seed{UserData: []byte("hello")}).Files(); !errors.Is(err, ErrUserData) {
		t.Errorf("seed with a bad user-data: %v", err)
	}
}
