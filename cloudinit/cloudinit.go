// Package cloudinit writes NoCloud seeds: an ISO9660 volume labelled
// cidata holding meta-data, user-data and network-config, which cloud-init
// (and vmfest's tiny test guest) reads from a CD-ROM at boot.
package cloudinit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kdomanski/iso9660"
	"sigs.k8s.io/yaml"
)

// VolumeLabel is the label cloud-init's NoCloud datasource looks for.
const VolumeLabel = "cidata"

// MinISOSize is the size seed images are padded to (see WriteISO).
const MinISOSize = 256 << 10

// Seed is what a machine's seed says.
type Seed struct {
	// InstanceID identifies the machine instance; cloud-init runs its
	// once-per-instance steps again when it changes.
	InstanceID string
	// Hostname is the machine's host name (its vmfest name).
	Hostname string
	// User is the login user the keys are given to; "" or root for root.
	User string
	// Password, if set, is the user's password (plain text, as the image
	// spec holds it).
	Password string
	// AuthorizedKeys are OpenSSH public keys allowed to log in as User.
	AuthorizedKeys []string
	// NICs are the adapters to configure, matched by MAC.
	NICs []NIC
	// UserData, when set, is the user's own user-data (checked with
	// CheckUserData), passed to cloud-init whole: the seed's user-data is
	// then a MIME multipart of it and vmfest's #cloud-config, which
	// cloud-init merges into the user's without replacing what the user
	// set.
	UserData []byte
}

// NIC is one adapter of network-config.
type NIC struct {
	MAC string
	// DHCP: the adapter gets its address by DHCP (host-only networks give
	// the address vmfest reserved; nat gives QEMU's). False: left
	// unconfigured (an internal network has no DHCP).
	DHCP bool
}

// Files returns the seed's three files.
func (s Seed) Files() (map[string][]byte, error) {
	meta, err := yaml.Marshal(map[string]string{"instance-id": s.InstanceID, "local-hostname": s.Hostname})
	if err != nil {
		return nil, err
	}
	user := map[string]any{
		"hostname":         s.Hostname,
		"ssh_pwauth":       s.Password != "",
		"disable_root":     false,
		"manage_etc_hosts": true,
	}
	keys := s.AuthorizedKeys
	if keys == nil {
		keys = []string{}
	}
	if s.User == "" || s.User == "root" {
		user["ssh_authorized_keys"] = keys
		if s.Password != "" {
			user["chpasswd"] = map[string]any{"expire": false, "users": []map[string]string{{"name": "root", "password": s.Password, "type": "text"}}}
		}
	} else {
		u := map[string]any{
			"name":                s.User,
			"sudo":                "ALL=(ALL) NOPASSWD:ALL",
			"shell":               "/bin/bash",
			"groups":              []string{"sudo"},
			"lock_passwd":         s.Password == "",
			"ssh_authorized_keys": keys,
		}
		if s.Password != "" {
			u["plain_text_passwd"] = s.Password
		}
		user["users"] = []any{"default", u}
	}
	// JSON is YAML too, and never folds a long line: a key stays on one
	// line for readers that grep for it (the tiny test guest does).
	ud, err := json.MarshalIndent(user, "", "  ")
	if err != nil {
		return nil, err
	}
	eth := map[string]any{}
	for i, n := range s.NICs {
		eth[fmt.Sprintf("nic%d", i)] = map[string]any{
			"match":    map[string]string{"macaddress": strings.ToLower(n.MAC)},
			"dhcp4":    n.DHCP,
			"optional": true,
		}
	}
	nc, err := yaml.Marshal(map[string]any{"version": 2, "ethernets": eth})
	if err != nil {
		return nil, err
	}
	own := append(append([]byte("#cloud-config\n"), ud...), '\n')
	if s.UserData != nil {
		mimeType, err := CheckUserData(s.UserData)
		if err != nil {
			return nil, err
		}
		if own, err = combine(s.UserData, mimeType, own); err != nil {
			return nil, err
		}
	}
	return map[string][]byte{
		"meta-data":      meta,
		"user-data":      own,
		"network-config": nc,
	}, nil
}

// WriteISO writes the seed as an ISO9660 image labelled cidata to path,
// atomically (temporary file, then rename).
func (s Seed) WriteISO(path string) error {
	files, err := s.Files()
	if err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	w, err := iso9660.NewWriter()
	if err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	defer w.Cleanup()
	for _, name := range []string{"meta-data", "user-data", "network-config"} {
		if err := w.AddFile(bytes.NewReader(files[name]), name); err != nil {
			return fmt.Errorf("cloud-init seed %s: %w", name, err)
		}
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".cidata-*.iso")
	if err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	defer os.Remove(f.Name())
	if err := w.WriteTo(f, VolumeLabel); err != nil {
		f.Close()
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	// The writer makes a minimal image (about 44 KiB). Some label probes
	// read more than that from the start of a device and give up on a
	// short read (busybox's findfs reads 68 KiB), so pad it with zero
	// sectors, as CD images often are.
	if err := f.Truncate(MinISOSize); err != nil {
		f.Close()
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("cloud-init seed: %w", err)
	}
	return nil
}
