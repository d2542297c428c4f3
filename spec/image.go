package spec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// The disk formats an image spec's format key takes.
const (
	DiskFormatRaw   = "raw"
	DiskFormatQCOW2 = "qcow2"
)

// diskFormats are the allowed formats, in the order errors list them.
var diskFormats = []string{DiskFormatRaw, DiskFormatQCOW2}

// Image describes a boot disk image and the metadata passed on to callers.
type Image struct {
	// Location is the path of the disk image (qcow2 or raw). VMFest called
	// it uuid; that key is accepted as an alias when reading.
	Location string `json:"location,omitempty"`
	// Immutable images are never written: each machine gets a copy-on-write
	// overlay backed by them. A mutable image is attached directly and
	// deleted when its machine is destroyed.
	Immutable bool `json:"immutable,omitempty"`
	// Format is the disk's format, raw or qcow2. Empty: decided from the
	// file's content when a machine first uses it, then recorded with the
	// machine and never decided again. Give it for a disk whose content a
	// guest may have written (a mutable disk), so its first bytes decide
	// nothing.
	Format string `json:"format,omitempty"`
	// OSFamily, OSVersion and OS64Bit describe the guest OS.
	OSFamily  string `json:"os-family,omitempty"`
	OSVersion string `json:"os-version,omitempty"`
	OS64Bit   bool   `json:"os-64-bit,omitempty"`
	// Username and Password are the guest's login.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// Description is free text.
	Description string `json:"description,omitempty"`
	// CloudInit says the image reads a NoCloud seed.
	CloudInit bool `json:"cloud-init,omitempty"`
	// Hardware overrides are laid over the chosen hardware (see Merge).
	Hardware *Hardware `json:"hardware,omitempty"`
}

// imageFields is Image with the uuid alias, as read from a file.
type imageFields struct {
	Location    string    `json:"location,omitempty"`
	UUID        string    `json:"uuid,omitempty"`
	Immutable   bool      `json:"immutable,omitempty"`
	Format      string    `json:"format,omitempty"`
	OSFamily    string    `json:"os-family,omitempty"`
	OSVersion   string    `json:"os-version,omitempty"`
	OS64Bit     bool      `json:"os-64-bit,omitempty"`
	Username    string    `json:"username,omitempty"`
	Password    string    `json:"password,omitempty"`
	Description string    `json:"description,omitempty"`
	CloudInit   bool      `json:"cloud-init,omitempty"`
	Hardware    *Hardware `json:"hardware,omitempty"`
}

// UnmarshalJSON reads an image spec strictly (unknown keys are errors) and
// accepts uuid as an alias of location.
func (im *Image) UnmarshalJSON(data []byte) error {
	var f imageFields
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return err
	}
	if f.UUID != "" && f.Location != "" && f.UUID != f.Location {
		return fmt.Errorf("location and uuid (its alias) differ: give one of them")
	}
	if f.Location == "" {
		f.Location = f.UUID
	}
	*im = Image{
		Location: f.Location, Immutable: f.Immutable, Format: f.Format,
		OSFamily: f.OSFamily, OSVersion: f.OSVersion, OS64Bit: f.OS64Bit,
		Username: f.Username, Password: f.Password, Description: f.Description,
		CloudInit: f.CloudInit, Hardware: f.Hardware,
	}
	return nil
}

// validateFormat checks the format key.
func (im Image) validateFormat(p *problems) {
	if im.Format != "" && !slices.Contains(diskFormats, im.Format) {
		p.add("format", "%q is not supported; allowed: %s", im.Format, strings.Join(diskFormats, ", "))
	}
}
