package image

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vmfest/vmfest/spec"
)

func TestStemAndModelID(t *testing.T) {
	tests := []struct {
		source, id, want, err string
	}{
		{"https://example.test/vmfest-images/debian-6.0.2.1-64bit-v0.3.vdi.gz", "", "debian-6.0.2.1-64bit-v0.3", ""},
		{"http://h/ubuntu-12.04", "", "ubuntu-12.04", ""},
		{"http://h/ubuntu-12.04.qcow2", "", "ubuntu-12.04", ""},
		{"http://h/a.raw.xz", "", "a", ""},
		{"http://h/a.img.zst", "", "a", ""},
		{"http://h/a.vhdx.bz2", "", "a", ""},
		{"http://h/precise32.box", "", "precise32", ""},
		{"http://h/appliance.ova", "", "appliance", ""},
		{"http://h/boxes.tgz", "", "boxes", ""},
		{"http://h/x.qcow2?token=1", "", "x", ""},
		{"/images/Alpine-3.20.VDI", "", "Alpine-3.20", ""},
		{"file:///images/alpine.qcow2", "mine", "mine", ""},
		{"http://h/a.qcow2", "../etc", "", "image model name"},
		{"http://h/my%20disk.qcow2", "", "", "give one with --id"},
		{"http://h/.qcow2", "", "", "give one with --id"},
	}
	for _, tt := range tests {
		src, err := ParseSource(tt.source)
		if err != nil {
			t.Fatalf("%s: %v", tt.source, err)
		}
		got, err := ModelID(src, tt.id)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ModelID(%s, %q) = %q, %v; want error with %q", tt.source, tt.id, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ModelID(%s, %q) = %q, %v; want %q", tt.source, tt.id, got, err, tt.want)
		}
	}
}

func TestParseSource(t *testing.T) {
	for _, bad := range []string{"", "ftp://h/a.img", "http:///a.img", "http://h/", "file://otherhost/a.img", "s3://bucket/a"} {
		if _, err := ParseSource(bad); !errors.Is(err, ErrSource) {
			t.Errorf("ParseSource(%q) = %v, want ErrSource", bad, err)
		}
	}
	src, _ := ParseSource("http://h/dir/a.vdi.gz?x=1")
	if got := src.Sibling("a.meta").String(); got != "http://h/dir/a.meta" {
		t.Errorf("sibling = %s", got)
	}
	src, _ = ParseSource("file:///dir/a.vdi.gz")
	if got := src.Sibling("SHA256SUMS").String(); got != "/dir/SHA256SUMS" {
		t.Errorf("sibling = %s", got)
	}
}

func TestParseMeta(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want spec.Image
		err  string
	}{
		{"VMFest EDN", `{:os-type-id "Ubuntu_64", :sudo-password "vmfest", :no-sudo false,
 :username "vmfest", :os-family :ubuntu, :os-version "12.04", :os-64-bit true,
 :password "vmfest", :description "Ubuntu 12.04 (64bit)" :packager :apt}`,
			spec.Image{OSFamily: "ubuntu", OSVersion: "12.04", OS64Bit: true, Username: "vmfest", Password: "vmfest", Description: "Ubuntu 12.04 (64bit)"}, ""},
		{"VMFest installed-model EDN", `;; written by vmfest
{:debian-6 {:os-family :debian :uuid "/home/u/.vmfest/models/vmfest-debian-6.vdi" :os-64-bit true}}`,
			spec.Image{OSFamily: "debian", OS64Bit: true}, ""},
		{"EDN with hardware", `{:os-family :debian :hardware {:memory-size 1024 :cpu-count 2}}`,
			spec.Image{OSFamily: "debian", Hardware: &spec.Hardware{MemorySize: 1024, CPUCount: 2}}, ""},
		{"EDN is never evaluated", `{:os-family #=(java.lang.System/exit 1)}`, spec.Image{}, "EDN"},
		{"EDN unknown key", `{:os-family :debian :colour "blue"}`, spec.Image{}, `unknown key "colour"`},
		{"EDN not a map", `[:os-family :debian]`, spec.Image{}, "not valid"},
		{"JSON", `{"os-family": "debian", "cloud-init": true, "location": "ignored.qcow2"}`,
			spec.Image{OSFamily: "debian", CloudInit: true}, ""},
		{"YAML", "os-family: alpine\nusername: root\nuuid: ignored\n", spec.Image{OSFamily: "alpine", Username: "root"}, ""},
		{"YAML unknown key", "os-famliy: alpine\n", spec.Image{}, `unknown key "os-famliy"`},
		{"empty", "", spec.Image{}, "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMeta([]byte(tt.in))
			if tt.err != "" {
				if !errors.Is(err, ErrMeta) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want ErrMeta with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Hardware != nil && tt.want.Hardware != nil {
				if got.Hardware.MemorySize != tt.want.Hardware.MemorySize || got.Hardware.CPUCount != tt.want.Hardware.CPUCount {
					t.Errorf("hardware = %+v, want %+v", *got.Hardware, *tt.want.Hardware)
				}
				got.Hardware, tt.want.Hardware = nil, nil
			}
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestFindSum(t *testing.T) {
	d := strings.Repeat("ab", 32)
	tests := []struct {
		file string
		bare bool
		want string
	}{
		{d + "  a.qcow2.gz\n", true, d},
		{d + " *a.qcow2.gz\n", false, d},
		{strings.ToUpper(d) + "  a.qcow2.gz\n", false, d},
		{"SHA256 (a.qcow2.gz) = " + d + "\n", false, d},
		{"# sums\n" + strings.Repeat("cd", 32) + "  b.img\n" + d + "  a.qcow2.gz\n", false, d},
		{d + "\n", true, d},
		{d + "\n", false, ""},
		{d + "  b.img\n", true, ""},
		{"nonsense  a.qcow2.gz\n", true, ""},
	}
	for _, tt := range tests {
		got, ok := findSum([]byte(tt.file), "a.qcow2.gz", tt.bare)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("findSum(%q, bare=%v) = %q, %v; want %q", tt.file, tt.bare, got, ok, tt.want)
		}
	}
}

func TestSniffCompression(t *testing.T) {
	tests := []struct {
		head []byte
		want string
	}{
		{[]byte{0x1f, 0x8b, 8, 0}, CompressionGzip},
		{[]byte{0xfd, '7', 'z', 'X', 'Z', 0, 0}, CompressionXZ},
		{[]byte{0x28, 0xb5, 0x2f, 0xfd, 0}, CompressionZstd},
		{[]byte("BZh91AY&SY...."), CompressionBzip2},
		{[]byte("BZh0nope......."), CompressionNone},
		{[]byte("QFI\xfb\x00\x00\x00\x03"), CompressionNone},
		{nil, CompressionNone},
	}
	for _, tt := range tests {
		if got := sniffCompression(tt.head); got != tt.want {
			t.Errorf("sniffCompression(%q) = %s, want %s", tt.head, got, tt.want)
		}
	}
}

func FuzzParseMeta(f *testing.F) {
	f.Add([]byte(`{:os-family :ubuntu :os-64-bit true}`))
	f.Add([]byte(`{"os-family": "debian"}`))
	f.Add([]byte("os-family: alpine\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		im, err := ParseMeta(data)
		if err == nil && im.Location != "" {
			t.Fatalf("location kept: %q", im.Location)
		}
	})
}
