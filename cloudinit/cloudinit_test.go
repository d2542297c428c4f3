package cloudinit

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kdomanski/iso9660"
	"sigs.k8s.io/yaml"
)

func TestSeedISO(t *testing.T) {
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB6hQm0Wb5mA9J5u3QmCkq4s1n6c0pT8W7n0Cq4X9a1b vmfest"
	tests := []struct {
		name   string
		seed   Seed
		checks []string // substrings of user-data
		not    []string
	}{
		{"root with key", Seed{InstanceID: "i-1", Hostname: "web1", AuthorizedKeys: []string{key}, NICs: []NIC{{MAC: "52:54:00:AA:00:01", DHCP: true}, {MAC: "52:54:00:aa:00:02"}}},
			[]string{"#cloud-config\n", `"hostname": "web1"`, `"` + key + `"`}, []string{"chpasswd", `"users"`}},
		{"user with password", Seed{InstanceID: "i-2", Hostname: "db", User: "debian", Password: "s3cret", AuthorizedKeys: []string{key, "ssh-rsa AAAAB3Nza user@laptop"}},
			[]string{`"name": "debian"`, `"plain_text_passwd": "s3cret"`, `"lock_passwd": false`, `"ssh_pwauth": true`, `"ssh-rsa AAAAB3Nza user@laptop"`}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "cidata.iso")
			if err := tt.seed.WriteISO(path); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if st, err := f.Stat(); err != nil || st.Size() < MinISOSize {
				t.Errorf("seed is %d bytes; label probes need at least %d (%v)", st.Size(), MinISOSize, err)
			}
			label, files, err := readISO(f)
			if err != nil {
				t.Fatal(err)
			}
			if label != VolumeLabel {
				t.Errorf("label = %q", label)
			}
			if len(files) != 3 {
				t.Fatalf("files = %v", files)
			}
			var meta map[string]string
			if err := yaml.Unmarshal(files["meta-data"], &meta); err != nil || meta["instance-id"] != tt.seed.InstanceID || meta["local-hostname"] != tt.seed.Hostname {
				t.Errorf("meta-data = %q (%v)", files["meta-data"], err)
			}
			ud := string(files["user-data"])
			for _, c := range tt.checks {
				if !strings.Contains(ud, c) {
					t.Errorf("user-data lacks %q:\n%s", c, ud)
				}
			}
			for _, c := range tt.not {
				if strings.Contains(ud, c) {
					t.Errorf("user-data has %q:\n%s", c, ud)
				}
			}
			var nc struct {
				Version   int `json:"version"`
				Ethernets map[string]struct {
					Match struct {
						MAC string `json:"macaddress"`
					} `json:"match"`
					DHCP4 bool `json:"dhcp4"`
				} `json:"ethernets"`
			}
			if err := yaml.Unmarshal(files["network-config"], &nc); err != nil || nc.Version != 2 || len(nc.Ethernets) != len(tt.seed.NICs) {
				t.Fatalf("network-config = %s (%v)", files["network-config"], err)
			}
			for i, n := range tt.seed.NICs {
				e := nc.Ethernets["nic"+string(rune('0'+i))]
				if e.Match.MAC != strings.ToLower(n.MAC) || e.DHCP4 != n.DHCP {
					t.Errorf("nic%d = %+v, want %+v", i, e, n)
				}
			}
		})
	}
}

// readISO returns the volume label and the files of an ISO9660 image.
func readISO(r io.ReaderAt) (label string, files map[string][]byte, err error) {
	img, err := iso9660.OpenImage(r)
	if err != nil {
		return "", nil, err
	}
	label, err = img.Label()
	if err != nil {
		return "", nil, err
	}
	root, err := img.RootDir()
	if err != nil {
		return "", nil, err
	}
	children, err := root.GetChildren()
	if err != nil {
		return "", nil, err
	}
	files = map[string][]byte{}
	for _, c := range children {
		if c.IsDir() {
			continue
		}
		data, err := io.ReadAll(c.Reader())
		if err != nil {
			return "", nil, err
		}
		files[c.Name()] = data
	}
	return label, files, nil
}
