package qga

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/internal/testutil"
)

func TestPlanNICs(t *testing.T) {
	have := []guestNIC{
		{name: "br0", mac: "52:54:00:00:00:01"},
		{name: "eth0", mac: "52:54:00:00:00:01", physical: true},
		{name: "eth1", mac: "52:54:00:00:00:0b", physical: true},
		{name: "lo", mac: "00:00:00:00:00:00"},
	}
	for _, tt := range []struct {
		name string
		want []ReidentifyNIC
		plan []nicChange
		err  string
	}{
		{"the physical NIC before a bridge with its MAC", []ReidentifyNIC{{0, "52:54:00:00:00:01", "52:54:00:00:00:0A"}}, []nicChange{{"eth0", "52:54:00:00:00:0a"}}, ""},
		{"one that has the clone's MAC already", []ReidentifyNIC{{1, "-", "52:54:00:00:00:0b"}}, nil, ""},
		{"both", []ReidentifyNIC{{0, "52:54:00:00:00:01", "52:54:00:00:00:0a"}, {1, "-", "52:54:00:00:00:0b"}}, []nicChange{{"eth0", "52:54:00:00:00:0a"}}, ""},
		{"a NIC the guest lacks", []ReidentifyNIC{{0, "52:54:00:00:00:01", "52:54:00:00:00:0a"}, {3, "52:54:00:00:00:99", "52:54:00:00:00:98"}}, nil,
			"network[3]: the guest has no interface with the source's MAC 52:54:00:00:00:99 or the clone's 52:54:00:00:00:98"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := planNICs(tt.want, have)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || !slices.Equal(plan, tt.plan) {
				t.Fatalf("plan = %v, %v; want %v", plan, err, tt.plan)
			}
		})
	}
}

func TestRewriteHosts(t *testing.T) {
	for _, tt := range []struct {
		name, in, want string
		changed        bool
	}{
		{"renamed", "127.0.0.1 localhost\n127.0.1.1 old\n::1 localhost\n", "127.0.0.1 localhost\n127.0.1.1 new\n::1 localhost\n", true},
		{"a tab and aliases", "127.0.1.1\told old.example\n", "127.0.1.1 new\n", true},
		{"already", "127.0.1.1 new\n", "127.0.1.1 new\n", false},
		{"no such line", "127.0.0.1 localhost\n127.0.1.10 other\n", "127.0.0.1 localhost\n127.0.1.10 other\n", false},
		{"no final newline", "127.0.1.1 old", "127.0.1.1 new", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := rewriteHosts(tt.in, "new")
			if got != tt.want || changed != tt.changed {
				t.Fatalf("got %q, %v; want %q, %v", got, changed, tt.want, tt.changed)
			}
		})
	}
}

func TestDHCPClientArgs(t *testing.T) {
	argv := []string{"udhcpc", "-f", "-i", "eth0", "-x", "hostname:old", "-x", "hostname:older"}
	if got, want := renameHostOption(argv, "old", "new"), []string{"udhcpc", "-f", "-i", "eth0", "-x", "hostname:new", "-x", "hostname:older"}; !slices.Equal(got, want) {
		t.Fatalf("renameHostOption = %q, want %q", got, want)
	}
	if argv[5] != "hostname:old" {
		t.Fatal("renameHostOption changed its argument")
	}
	for _, tt := range []struct {
		argv []string
		ifc  string
		want bool
	}{
		{[]string{"udhcpc", "-i", "eth0"}, "eth0", true},
		{[]string{"/sbin/udhcpc", "-ieth0"}, "eth0", true},
		{[]string{"udhcpc", "--interface=eth0"}, "eth0", true},
		{[]string{"udhcpc", "-i", "eth0"}, "eth1", false},
		{[]string{"dhclient", "eth0"}, "eth0", false},
		{[]string{"udhcpc"}, "eth0", false},
		{nil, "eth0", false},
	} {
		if got := isUdhcpcOn(tt.argv, tt.ifc); got != tt.want {
			t.Errorf("isUdhcpcOn(%q, %s) = %v", tt.argv, tt.ifc, got)
		}
	}
}

// TestReidentifyRefusals checks the arguments vmfest-reidentify refuses
// before it looks at the guest, and that guest-info lists it.
func TestReidentifyRefusals(t *testing.T) {
	a := &Agent{}
	for _, tt := range []struct {
		name string
		args map[string]any
		want string
	}{
		{"no host name", map[string]any{"hostname": ""}, "Invalid parameter 'hostname'"},
		{"a path for a host name", map[string]any{"hostname": "a/b"}, "Invalid parameter 'hostname'"},
		{"seed not base64", map[string]any{"hostname": "h", "seed": "!!"}, "Invalid parameter 'seed'"},
		{"a bad MAC", map[string]any{"hostname": "h", "nics": []map[string]any{{"slot": 0, "from": "-", "to": "52:54"}}}, "Invalid parameter 'nics[0].to'"},
		{"a bad source MAC", map[string]any{"hostname": "h", "nics": []map[string]any{{"slot": 0, "from": "x", "to": "52:54:00:00:00:01"}}}, "Invalid parameter 'nics[0].from'"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, qe := try(t, a, ReidentifyCommand, tt.args); qe == nil || !strings.Contains(qe.Desc, tt.want) {
				t.Fatalf("error %+v, want %q", qe, tt.want)
			}
		})
	}
	if !slices.Contains(Commands(), ReidentifyCommand) {
		t.Errorf("%s is not among the supported commands", ReidentifyCommand)
	}
}

// TestReidentifyInNamespace runs vmfest-reidentify against a namespaced
// stand-in for a guest (reidentifyHarness): v0 takes the clone's MAC, its
// udhcpc is started again with the new name, the host name and files
// change; a NIC the guest lacks is refused before anything is touched.
// The re-run inside the namespace is this test too, told by its
// environment.
func TestReidentifyInNamespace(t *testing.T) {
	if nics := os.Getenv("VMFEST_QGA_REIDENTIFY_NICS"); nics != "" {
		reidentifyHere(t, nics)
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		nics    string
		cycle   bool   // set the link down and up, as for e1000
		client  string // the host name its udhcpc sends once done
		want    []string
		refused bool
	}{
		{"reidentified in place", "0 52:54:00:00:00:01 52:54:00:00:00:0a", false, "newname", []string{
			"rc=0", "mac=52:54:00:00:00:0a", "ll6=fe80::5054:ff:fe00:a ", "v4=", "host=newname", "etc-hostname=newname", "hosts=127.0.1.1 newname"}, false},
		{"reidentified by a link cycle", "0 52:54:00:00:00:01 52:54:00:00:00:0a", true, "newname", []string{
			"rc=0", "mac=52:54:00:00:00:0a", "ll6=fe80::5054:ff:fe00:a ", "v4=", "host=newname", "etc-hostname=newname", "hosts=127.0.1.1 newname"}, false},
		{"NICs unchanged", "1 - 52:54:00:00:00:01", false, "oldname", []string{
			"rc=0", "mac=52:54:00:00:00:01", "ll6=fe80::5054:ff:fe00:1 ", "v4=inet 192.0.2.10/24 ", "host=newname", "hosts=127.0.1.1 newname"}, false},
		{"unknown NIC", "0 52:54:00:00:00:01 52:54:00:00:00:0a 3 52:54:00:00:00:99 52:54:00:00:00:98", false, "oldname", []string{
			"rc=1", "mac=52:54:00:00:00:01", "v4=inet 192.0.2.10/24 ", "host=oldname", "hosts=127.0.1.1 oldname"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := []string{"HELPER=" + self, "VMFEST_QGA_REIDENTIFY_NICS=" + tc.nics}
			if tc.cycle {
				env = append(env, "VMFEST_QGA_REIDENTIFY_CYCLE=1")
			}
			dir := testutil.ReidentifyStandIn(t, `"$HELPER" -test.run='^TestReidentifyInNamespace$' >"$DIR/out" 2>&1`, tc.client, tc.want, env...)
			helper, err := os.ReadFile(filepath.Join(dir, "out"))
			if err != nil {
				t.Fatal(err)
			}
			const refusal = "network[3]: the guest has no interface with the source's MAC 52:54:00:00:00:99 or the clone's 52:54:00:00:00:98"
			if strings.Contains(string(helper), refusal) != tc.refused {
				t.Errorf("the command's refusal (want %v):\n%s", tc.refused, helper)
			}
		})
	}
}

func reidentifyHere(t *testing.T, spec string) {
	f := strings.Fields(spec)
	var nics []ReidentifyNIC
	for i := 0; i+2 < len(f); i += 3 {
		slot, err := strconv.Atoi(f[i])
		if err != nil {
			t.Fatal(err)
		}
		nics = append(nics, ReidentifyNIC{Slot: slot, From: f[i+1], To: f[i+2]})
	}
	a := &Agent{cycleLinks: os.Getenv("VMFEST_QGA_REIDENTIFY_CYCLE") != ""}
	ret, qe := try(t, a, ReidentifyCommand, map[string]any{"hostname": "newname", "seed": "", "nics": nics})
	if qe != nil {
		t.Fatal(qe.Desc)
	}
	var res ReidentifyResult
	if err := json.Unmarshal(ret, &res); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for res.Clients > 0 && time.Now().Before(deadline) {
		clients, _ := findDHCPClients([]nicChange{{name: "v0"}})
		if len(clients) == res.Clients {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	if res.Clients > 0 {
		t.Fatalf("the %d DHCP clients did not start again", res.Clients)
	}
}
