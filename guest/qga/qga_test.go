package qga

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func testAgent(shutdowns *[]string) *Agent {
	return &Agent{
		Shutdown: func(mode string) error {
			*shutdowns = append(*shutdowns, mode)
			return nil
		},
		Interfaces: func() ([]Interface, error) {
			return []Interface{
				{Name: "lo", HardwareAddress: "00:00:00:00:00:00", IPAddresses: []IPAddress{{Type: "ipv4", Address: "127.0.0.1", Prefix: 8}}},
				{Name: "eth0", HardwareAddress: "52:54:00:12:34:56", IPAddresses: []IPAddress{
					{Type: "ipv4", Address: "10.0.2.15", Prefix: 24},
					{Type: "ipv6", Address: "fe80::5054:ff:fe12:3456", Prefix: 64},
				}},
			}, nil
		},
		OSInfo: func() (*OSInfo, error) {
			return &OSInfo{KernelRelease: "6.1.0", Machine: "x86_64", ID: "debian", VersionID: "12"}, nil
		},
		Hostname: func() (string, error) { return "vmfest-tiny", nil },
		Now:      func() time.Time { return time.Unix(1, 5) },
	}
}

func TestServe(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		want      string // expected output, exactly
		shutdowns []string
	}{
		{"sync", `{"execute":"guest-sync","arguments":{"id":1234}}` + "\n", `{"return":1234}` + "\n", nil},
		{"sync big id", `{"execute":"guest-sync","arguments":{"id":9007199254740993}}`, `{"return":9007199254740993}` + "\n", nil},
		{"sync missing id", `{"execute":"guest-sync"}`, `{"error":{"class":"GenericError","desc":"Parameter 'id' is missing"}}` + "\n", nil},
		{"sync bad id", `{"execute":"guest-sync","arguments":{"id":"x"}}`, `{"error":{"class":"GenericError","desc":"Invalid arguments: json: invalid number literal, trying to unmarshal \"\\\"x\\\"\" into Number"}}` + "\n", nil},
		{"sync delimited", `{"execute":"guest-sync-delimited","arguments":{"id":7}}`, "\xff" + `{"return":7}` + "\n", nil},
		{"ping", `{"execute":"guest-ping"}`, `{"return":{}}` + "\n", nil},
		{"ping with id", `{"execute":"guest-ping","id":"abc"}`, `{"return":{},"id":"abc"}` + "\n", nil},
		{"no newline between", `{"execute":"guest-ping"}{"execute":"guest-sync","arguments":{"id":1}}`, `{"return":{}}` + "\n" + `{"return":1}` + "\n", nil},
		{"pretty printed", "{\n  \"execute\": \"guest-ping\",\n  \"arguments\": {}\n}\n", `{"return":{}}` + "\n", nil},
		{"braces in strings", `{"execute":"guest-sync","arguments":{"id":3},"x":"}{\"}"}`, `{"return":3}` + "\n", nil},
		{"0xff discarded", "\xff" + `{"execute":"guest-ping"}` + "\xff\n", `{"return":{}}` + "\n", nil},
		{"0xff resets partial", `{"execute":"gue` + "\xff" + `{"execute":"guest-ping"}`, `{"return":{}}` + "\n", nil},
		{"unknown command", `{"execute":"guest-frobnicate"}`, `{"error":{"class":"CommandNotFound","desc":"The command guest-frobnicate has not been found"}}` + "\n", nil},
		{"garbage then valid", "hello world\n" + `{"execute":"guest-ping"}`, `{"error":{"class":"GenericError","desc":"Invalid JSON: invalid character 'h' looking for beginning of value"}}` + "\n" + `{"return":{}}` + "\n", nil},
		{"malformed object", `{"execute": }` + "\n" + `{"execute":"guest-ping"}`, `{"error":{"class":"GenericError","desc":"Invalid JSON: invalid character '}' looking for beginning of value"}}` + "\n" + `{"return":{}}` + "\n", nil},
		{"no execute", `{"arguments":{}}`, `{"error":{"class":"GenericError","desc":"Expected 'execute' in QMP input"}}` + "\n", nil},
		{"array", `[1,2]`, `{"error":{"class":"GenericError","desc":"Invalid JSON: json: cannot unmarshal array into Go value of type qga.Request"}}` + "\n", nil},
		{"shutdown default", `{"execute":"guest-shutdown"}`, "", []string{"powerdown"}},
		{"shutdown reboot", `{"execute":"guest-shutdown","arguments":{"mode":"reboot"}}`, "", []string{"reboot"}},
		{"shutdown halt", `{"execute":"guest-shutdown","arguments":{"mode":"halt"}}`, "", []string{"halt"}},
		{"shutdown bad mode", `{"execute":"guest-shutdown","arguments":{"mode":"explode"}}`, `{"error":{"class":"GenericError","desc":"Parameter 'mode' does not accept value 'explode'"}}` + "\n", nil},
		{"interfaces", `{"execute":"guest-network-get-interfaces"}`,
			`{"return":[{"name":"lo","hardware-address":"00:00:00:00:00:00","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"127.0.0.1","prefix":8}]},` +
				`{"name":"eth0","hardware-address":"52:54:00:12:34:56","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"10.0.2.15","prefix":24},{"ip-address-type":"ipv6","ip-address":"fe80::5054:ff:fe12:3456","prefix":64}]}]}` + "\n", nil},
		{"osinfo", `{"execute":"guest-get-osinfo"}`, `{"return":{"kernel-release":"6.1.0","machine":"x86_64","id":"debian","version-id":"12"}}` + "\n", nil},
		{"hostname", `{"execute":"guest-get-host-name"}`, `{"return":{"host-name":"vmfest-tiny"}}` + "\n", nil},
		{"time", `{"execute":"guest-get-time"}`, `{"return":1000000005}` + "\n", nil},
		{"blank lines ignored", "\n\n  \n", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var shutdowns []string
			a := testAgent(&shutdowns)
			var out bytes.Buffer
			err := a.Serve(strings.NewReader(tt.in), &out)
			if err != io.EOF {
				t.Fatalf("Serve returned %v, want io.EOF", err)
			}
			if got := out.String(); got != tt.want {
				t.Errorf("output:\n got %q\nwant %q", got, tt.want)
			}
			if strings.Join(shutdowns, ",") != strings.Join(tt.shutdowns, ",") {
				t.Errorf("shutdowns = %v, want %v", shutdowns, tt.shutdowns)
			}
		})
	}
}

func TestGuestInfo(t *testing.T) {
	a := &Agent{}
	reply, _, _ := a.Handle([]byte(`{"execute":"guest-info"}`))
	var r struct {
		Return struct {
			Version           string `json:"version"`
			SupportedCommands []struct {
				Name            string `json:"name"`
				Enabled         bool   `json:"enabled"`
				SuccessResponse bool   `json:"success-response"`
			} `json:"supported_commands"`
		} `json:"return"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		t.Fatal(err)
	}
	if r.Return.Version != Version {
		t.Errorf("version %q", r.Return.Version)
	}
	got := map[string]bool{}
	for _, c := range r.Return.SupportedCommands {
		if !c.Enabled {
			t.Errorf("%s not enabled", c.Name)
		}
		got[c.Name] = c.SuccessResponse
	}
	for _, name := range []string{"guest-sync", "guest-sync-delimited", "guest-ping", "guest-info", "guest-network-get-interfaces", "guest-shutdown"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing from supported_commands", name)
		}
	}
	if got["guest-shutdown"] {
		t.Errorf("guest-shutdown should have success-response false")
	}
}

// TestPipe checks the agent over a synchronous connection, as the host would
// use it: guest-sync-delimited, then commands, with the host closing the
// connection at the end.
func TestPipe(t *testing.T) {
	host, guest := net.Pipe()
	var shutdowns []string
	a := testAgent(&shutdowns)
	done := make(chan error, 1)
	go func() { done <- a.Serve(guest, guest) }()

	br := bufio.NewReader(host)
	send := func(s string) {
		t.Helper()
		if _, err := host.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	line := func() string {
		t.Helper()
		host.SetReadDeadline(time.Now().Add(5 * time.Second))
		s, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	send("\xff" + `{"execute":"guest-sync-delimited","arguments":{"id":42}}` + "\n")
	if got := line(); got != "\xff"+`{"return":42}`+"\n" {
		t.Errorf("sync-delimited: %q", got)
	}
	send(`{"execute":"guest-ping"}` + "\n")
	if got := line(); got != `{"return":{}}`+"\n" {
		t.Errorf("ping: %q", got)
	}
	send("{bad json}\n")
	if got := line(); !strings.Contains(got, `"class":"GenericError"`) {
		t.Errorf("bad json: %q", got)
	}
	send(`{"execute":"guest-ping"}`)
	if got := line(); got != `{"return":{}}`+"\n" {
		t.Errorf("ping after error: %q", got)
	}
	host.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("Serve returned nil error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after close")
	}
}

func TestShutdownErrorLogged(t *testing.T) {
	var logged []string
	a := &Agent{
		Shutdown: func(string) error { return errors.New("nope") },
		Logf:     func(f string, args ...any) { logged = append(logged, f) },
	}
	reply, _, after := a.Handle([]byte(`{"execute":"guest-shutdown","arguments":{"mode":"halt"}}`))
	if reply != nil || after == nil {
		t.Fatalf("reply %q, after %v", reply, after != nil)
	}
	after()
	if len(logged) != 1 {
		t.Errorf("logged %v", logged)
	}
}

// TestSplitterTooLarge: a request over maxRequest gets one error reply, is
// read to its end without being kept, and the next request is answered.
func TestSplitterTooLarge(t *testing.T) {
	big := `{"execute":"guest-exec","arguments":{"path":"cat","input-data":"` + strings.Repeat("QUFB", maxRequest/4+10) + `"}}`
	in := big + `{"execute":"guest-ping"}` + "\n"
	var out bytes.Buffer
	a := &Agent{}
	if err := a.Serve(strings.NewReader(in), &out); err != io.EOF {
		t.Fatalf("Serve returned %v, want io.EOF", err)
	}
	want := `{"error":{"class":"GenericError","desc":"Request too large: over 8388608 bytes"}}` + "\n" + `{"return":{}}` + "\n"
	if got := out.String(); got != want {
		t.Errorf("output:\n got %q\nwant %q", got, want)
	}
	var s Splitter
	for i := 0; i < maxRequest+10; i++ {
		if got := s.Feed('x'); got != nil {
			t.Fatalf("stray text emitted before its newline: %.20q", got)
		}
	}
	if got := s.Feed('\n'); string(got) != tooLarge {
		t.Errorf("oversized stray text: got %.20q", got)
	}
	if len(s.buf) != 0 || cap(s.buf) > maxRequest {
		t.Errorf("buffer kept after an oversized request: len %d cap %d", len(s.buf), cap(s.buf))
	}
}

func TestParseOSRelease(t *testing.T) {
	m := ParseOSRelease("# c\nID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID='12'\nbogus\n")
	want := map[string]string{"ID": "debian", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "VERSION_ID": "12"}
	if len(m) != len(want) {
		t.Errorf("got %v", m)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %q, want %q", k, m[k], v)
		}
	}
}

func TestSystemInterfaces(t *testing.T) {
	ifs, err := SystemInterfaces()
	if err != nil {
		t.Skip(err)
	}
	for _, i := range ifs {
		if i.Name == "" || i.HardwareAddress == "" {
			t.Errorf("bad interface %+v", i)
		}
		for _, ip := range i.IPAddresses {
			if ip.Type != "ipv4" && ip.Type != "ipv6" {
				t.Errorf("bad type %+v", ip)
			}
		}
	}
}
