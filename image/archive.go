package image

import (
	"archive/tar"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/vmfest/vmfest/spec"
)

// The containers Prepare unpacks.
const (
	ContainerBox = "box" // a Vagrant box: metadata.json and a disk
	ContainerOVA = "ova" // an OVF package: the .ovf descriptor and a VMDK
	ContainerTar = "tar" // another tar holding one disk
)

// diskSuffixes are the names of disk images inside an archive.
var diskSuffixes = []string{".img", ".qcow2", ".vmdk", ".vdi", ".raw", ".vhd", ".vhdx"}

// archiveInfo is what an archive says about its disk.
type archiveInfo struct {
	container string
	meta      spec.Image
	member    string // the disk's name in the archive
}

// extractArchive reads a tar stream to its end, writing its first disk
// image to disk and reading a Vagrant box's metadata.json or an OVF
// descriptor.
func extractArchive(r io.Reader, disk string, log func(msg string, args ...any)) (archiveInfo, error) {
	var info archiveInfo
	var hasBoxMeta, hasOVF bool
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return info, fmt.Errorf("%w: archive: %v", ErrCorrupt, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		name := path.Base(hdr.Name)
		lower := strings.ToLower(name)
		switch {
		case lower == "metadata.json":
			data, err := io.ReadAll(io.LimitReader(tr, maxSidecar))
			if err != nil {
				return info, fmt.Errorf("%w: archive: %s: %v", ErrCorrupt, hdr.Name, err)
			}
			m, err := boxMeta(data)
			if err != nil {
				return info, err
			}
			info.meta = Merge(m, info.meta)
			hasBoxMeta = true
		case strings.HasSuffix(lower, ".ovf"):
			data, err := io.ReadAll(io.LimitReader(tr, 16*maxSidecar))
			if err != nil {
				return info, fmt.Errorf("%w: archive: %s: %v", ErrCorrupt, hdr.Name, err)
			}
			m, err := ovfMeta(data)
			if err != nil {
				return info, err
			}
			info.meta = Merge(info.meta, m)
			hasOVF = true
		case hasSuffix(lower, diskSuffixes):
			if info.member != "" {
				log("the archive holds more than one disk; only the first is installed", "installed", info.member, "skipped", hdr.Name)
				continue
			}
			f, err := os.OpenFile(disk, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return info, fmt.Errorf("unpack %s: %w", hdr.Name, err)
			}
			_, err = writeSparse(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrCorrupt) {
				return info, fmt.Errorf("%w: archive: %s ends early: the archive is truncated", ErrCorrupt, hdr.Name)
			}
			if err != nil {
				return info, fmt.Errorf("unpack %s: %w", hdr.Name, err)
			}
			info.member = hdr.Name
		}
	}
	switch {
	case hasBoxMeta:
		info.container = ContainerBox
	case hasOVF:
		info.container = ContainerOVA
	default:
		info.container = ContainerTar
	}
	if info.member == "" {
		return info, fmt.Errorf("%w: the %s archive holds no disk image (looked for files ending in %s)", ErrNotDiskImage, info.container, strings.Join(diskSuffixes, ", "))
	}
	return info, nil
}

func hasSuffix(s string, sufs []string) bool {
	for _, suf := range sufs {
		if strings.HasSuffix(s, suf) {
			return true
		}
	}
	return false
}

// boxMeta reads a Vagrant box's metadata.json ({"provider": "libvirt",
// "format": "qcow2", "virtual_size": 40}). Vagrant boxes log in as
// vagrant/vagrant by convention.
func boxMeta(data []byte) (spec.Image, error) {
	var m struct {
		Provider    string `json:"provider"`
		Format      string `json:"format"`
		Description string `json:"description"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return spec.Image{}, fmt.Errorf("%w: Vagrant box metadata.json: %v", ErrMeta, err)
	}
	desc := m.Description
	if desc == "" {
		desc = "Vagrant box"
		if m.Provider != "" {
			desc += " (" + m.Provider + " provider)"
		}
	}
	return spec.Image{Username: "vagrant", Password: "vagrant", Description: desc}, nil
}

// ovfEnvelope is the part of an OVF descriptor read here (attribute and
// element names match whatever their namespace).
type ovfEnvelope struct {
	VirtualSystem struct {
		ID   string `xml:"id,attr"`
		Name string `xml:"Name"`
		OS   struct {
			ID          string `xml:"id,attr"`
			OSType      string `xml:"osType,attr"`
			Description string `xml:"Description"`
			VBoxOSType  string `xml:"OSType"`
		} `xml:"OperatingSystemSection"`
		Annotation string `xml:"AnnotationSection>Annotation"`
		Product    string `xml:"ProductSection>Product"`
		Version    string `xml:"ProductSection>Version"`
	} `xml:"VirtualSystem"`
}

// ovfMeta reads an OVF descriptor: the description from its annotation,
// product or name, the OS family and bitness from its OS section.
func ovfMeta(data []byte) (spec.Image, error) {
	var env ovfEnvelope
	if err := xml.Unmarshal(data, &env); err != nil {
		return spec.Image{}, fmt.Errorf("%w: OVF descriptor: %v", ErrMeta, err)
	}
	vs := env.VirtualSystem
	var im spec.Image
	switch {
	case strings.TrimSpace(vs.Annotation) != "":
		im.Description = strings.TrimSpace(vs.Annotation)
	case vs.Product != "":
		im.Description = strings.TrimSpace(vs.Product + " " + vs.Version)
	case vs.Name != "":
		im.Description = vs.Name
	default:
		im.Description = vs.ID
	}
	osText := strings.ToLower(strings.Join([]string{vs.OS.OSType, vs.OS.VBoxOSType, vs.OS.Description}, " "))
	im.OSFamily = osFamily(osText)
	im.OS64Bit = strings.Contains(osText, "64")
	return im, nil
}

// osFamily guesses VMFest's os-family from an OS name.
func osFamily(s string) string {
	for _, f := range []struct{ word, family string }{
		{"ubuntu", "ubuntu"}, {"debian", "debian"}, {"centos", "centos"}, {"rhel", "rhel"},
		{"redhat", "rhel"}, {"red hat", "rhel"}, {"fedora", "fedora"}, {"suse", "suse"},
		{"arch", "arch"}, {"alpine", "alpine"}, {"freebsd", "freebsd"}, {"openbsd", "openbsd"},
		{"netbsd", "netbsd"}, {"windows", "windows"}, {"linux", "linux"},
	} {
		if strings.Contains(s, f.word) {
			return f.family
		}
	}
	return ""
}
