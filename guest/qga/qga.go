// Package qga implements a small subset of the QEMU guest agent protocol
// (https://qemu.readthedocs.io/en/latest/interop/qemu-ga-ref.html) for the
// vmfest tiny test guest.
//
// The protocol is a stream of JSON objects {"execute": "cmd", "arguments":
// {...}} from the host; each is answered with {"return": ...} or
// {"error": {"class": "...", "desc": "..."}} followed by a newline. A 0xFF
// byte from the host resets the parser (used by the host to resynchronise).
package qga

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Version is reported by guest-info.
const Version = "vmfest-qga-0.1"

// Error classes as used by QEMU.
const (
	ClassGenericError    = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
)

// maxRequest bounds the size of a single request. It leaves room for
// guest-exec's input-data: standard input up to 6 MiB, base64-encoded.
const maxRequest = 8 << 20

// Request is one command sent by the host.
type Request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        json.RawMessage `json:"id,omitempty"`
}

// Error is the payload of an error reply.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Errorf makes a GenericError.
func Errorf(format string, a ...any) *Error {
	return &Error{Class: ClassGenericError, Desc: fmt.Sprintf(format, a...)}
}

// Response is one reply. Exactly one of Return and Error is set.
type Response struct {
	Return any             `json:"return,omitempty"`
	Error  *Error          `json:"error,omitempty"`
	ID     json.RawMessage `json:"id,omitempty"`
}

// IPAddress is an entry of guest-network-get-interfaces' ip-addresses.
type IPAddress struct {
	Type    string `json:"ip-address-type"` // "ipv4" or "ipv6"
	Address string `json:"ip-address"`
	Prefix  int    `json:"prefix"`
}

// Interface is an entry of guest-network-get-interfaces' reply.
type Interface struct {
	Name            string      `json:"name"`
	HardwareAddress string      `json:"hardware-address,omitempty"`
	IPAddresses     []IPAddress `json:"ip-addresses,omitempty"`
}

// OSInfo is the reply of guest-get-osinfo.
type OSInfo struct {
	KernelRelease string `json:"kernel-release,omitempty"`
	KernelVersion string `json:"kernel-version,omitempty"`
	Machine       string `json:"machine,omitempty"`
	ID            string `json:"id,omitempty"`
	Name          string `json:"name,omitempty"`
	PrettyName    string `json:"pretty-name,omitempty"`
	Version       string `json:"version,omitempty"`
	VersionID     string `json:"version-id,omitempty"`
}

// Agent holds the command handlers' dependencies. The zero value is usable:
// nil hooks fall back to the defaults (real network interfaces, os-release,
// and an error for shutdown).
type Agent struct {
	// Shutdown performs guest-shutdown; mode is "powerdown", "halt" or
	// "reboot". It is called after the (absent) reply has been written and
	// should return quickly (start the shutdown asynchronously).
	Shutdown func(mode string) error
	// Interfaces lists network interfaces.
	Interfaces func() ([]Interface, error)
	// OSInfo describes the guest OS.
	OSInfo func() (*OSInfo, error)
	// Hostname returns the host name.
	Hostname func() (string, error)
	// Now returns the current time.
	Now func() time.Time
	// Logf, if set, receives diagnostics.
	Logf func(format string, a ...any)
	// ExecOutputLimit bounds what guest-exec captures of each output
	// stream of a process; 0 means MaxExecOutput.
	ExecOutputLimit int

	// DHCP, if set, keeps some interfaces addressed by DHCP in the
	// agent's process and follows their MACs itself: vmfest-reidentify
	// leaves the DHCP of the interfaces it manages to it.
	DHCP interface{ Manages(ifc string) bool }

	// cycleLinks makes vmfest-reidentify set each link down and up to
	// change its MAC, as it does for a driver that refuses an in-place
	// change (tests).
	cycleLinks bool

	mu    sync.Mutex // serialises writes
	execs execTable  // processes started by guest-exec
	files fileTable  // files opened by guest-file-open
}

type handler func(a *Agent, args json.RawMessage) (any, error)

// noReply is returned by handlers that must not produce a reply.
var noReply = &struct{ _ int }{}

type command struct {
	fn      handler
	success bool // whether the command sends a success response
}

var commands map[string]command

func init() {
	commands = map[string]command{
		"guest-sync":                   {(*Agent).sync, true},
		"guest-sync-delimited":         {(*Agent).sync, true},
		"guest-ping":                   {(*Agent).ping, true},
		"guest-info":                   {(*Agent).info, true},
		"guest-network-get-interfaces": {(*Agent).interfaces, true},
		"guest-shutdown":               {(*Agent).shutdown, false},
		"guest-get-osinfo":             {(*Agent).osinfo, true},
		"guest-get-host-name":          {(*Agent).hostname, true},
		"guest-get-time":               {(*Agent).time, true},
		"guest-set-time":               {(*Agent).setTime, true},
		"guest-exec":                   {(*Agent).exec, true},
		"guest-exec-status":            {(*Agent).execStatus, true},
		"guest-file-open":              {(*Agent).fileOpen, true},
		"guest-file-close":             {(*Agent).fileClose, true},
		"guest-file-read":              {(*Agent).fileRead, true},
		"guest-file-write":             {(*Agent).fileWrite, true},
		"guest-file-seek":              {(*Agent).fileSeek, true},
		"guest-file-flush":             {(*Agent).fileFlush, true},
		ReseedCommand:                  {(*Agent).reseed, true},
		ReidentifyCommand:              {(*Agent).reidentify, true},
	}
}

// Commands returns the supported command names, sorted.
func Commands() []string {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (a *Agent) logf(format string, args ...any) {
	if a.Logf != nil {
		a.Logf(format, args...)
	}
}

// Handle executes one raw request (a complete JSON value) and returns the
// reply to write, without the trailing newline, or nil if no reply is due.
// The boolean reports whether a 0xFF delimiter must precede the reply, and
// after is a function to run once the reply has been written (may be nil).
func (a *Agent) Handle(raw []byte) (reply []byte, delimited bool, after func()) {
	if string(raw) == tooLarge {
		return a.marshal(Response{Error: Errorf("Request too large: over %d bytes", maxRequest)}), false, nil
	}
	var req Request
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		return a.marshal(Response{Error: Errorf("Invalid JSON: %v", err)}), false, nil
	}
	if dec.More() {
		return a.marshal(Response{Error: Errorf("Invalid JSON: trailing data")}), false, nil
	}
	if req.Execute == "" {
		return a.marshal(Response{Error: Errorf("Expected 'execute' in QMP input"), ID: req.ID}), false, nil
	}
	cmd, ok := commands[req.Execute]
	if !ok {
		return a.marshal(Response{
			Error: &Error{Class: ClassCommandNotFound, Desc: fmt.Sprintf("The command %s has not been found", req.Execute)},
			ID:    req.ID,
		}), false, nil
	}
	ret, err := cmd.fn(a, req.Arguments)
	if err != nil {
		var qe *Error
		if !errors.As(err, &qe) {
			qe = Errorf("%v", err)
		}
		return a.marshal(Response{Error: qe, ID: req.ID}), false, nil
	}
	if req.Execute == "guest-shutdown" {
		mode := ret.(string)
		return nil, false, func() {
			if a.Shutdown == nil {
				a.logf("guest-shutdown %s: not supported", mode)
				return
			}
			if err := a.Shutdown(mode); err != nil {
				a.logf("guest-shutdown %s: %v", mode, err)
			}
		}
	}
	if ret == noReply {
		return nil, false, nil
	}
	return a.marshal(Response{Return: ret, ID: req.ID}), req.Execute == "guest-sync-delimited", nil
}

func (a *Agent) marshal(r Response) []byte {
	if r.Error == nil && r.Return == nil {
		r.Return = struct{}{}
	}
	b, err := json.Marshal(r)
	if err != nil {
		b, _ = json.Marshal(Response{Error: Errorf("cannot encode reply: %v", err)})
	}
	return b
}

func decodeArgs(args json.RawMessage, v any) error {
	if len(bytes.TrimSpace(args)) == 0 || string(bytes.TrimSpace(args)) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(args))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return Errorf("Invalid arguments: %v", err)
	}
	return nil
}

func (a *Agent) sync(args json.RawMessage) (any, error) {
	var p struct {
		ID *json.Number `json:"id"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	if p.ID == nil {
		return nil, Errorf("Parameter 'id' is missing")
	}
	if _, err := p.ID.Int64(); err != nil {
		return nil, Errorf("Invalid parameter type for 'id', expected: integer")
	}
	return *p.ID, nil
}

func (a *Agent) ping(json.RawMessage) (any, error) { return struct{}{}, nil }

func (a *Agent) info(json.RawMessage) (any, error) {
	type cmdInfo struct {
		Name            string `json:"name"`
		Enabled         bool   `json:"enabled"`
		SuccessResponse bool   `json:"success-response"`
	}
	var list []cmdInfo
	for _, n := range Commands() {
		list = append(list, cmdInfo{Name: n, Enabled: true, SuccessResponse: commands[n].success})
	}
	return struct {
		Version           string    `json:"version"`
		SupportedCommands []cmdInfo `json:"supported_commands"`
	}{Version, list}, nil
}

func (a *Agent) interfaces(json.RawMessage) (any, error) {
	f := a.Interfaces
	if f == nil {
		f = SystemInterfaces
	}
	ifs, err := f()
	if err != nil {
		return nil, Errorf("cannot list interfaces: %v", err)
	}
	if ifs == nil {
		ifs = []Interface{}
	}
	return ifs, nil
}

func (a *Agent) shutdown(args json.RawMessage) (any, error) {
	var p struct {
		Mode string `json:"mode"`
	}
	if err := decodeArgs(args, &p); err != nil {
		return nil, err
	}
	switch p.Mode {
	case "":
		p.Mode = "powerdown"
	case "powerdown", "halt", "reboot":
	default:
		return nil, Errorf("Parameter 'mode' does not accept value '%s'", p.Mode)
	}
	return p.Mode, nil
}

func (a *Agent) osinfo(json.RawMessage) (any, error) {
	f := a.OSInfo
	if f == nil {
		f = SystemOSInfo
	}
	info, err := f()
	if err != nil {
		return nil, Errorf("cannot get OS info: %v", err)
	}
	return info, nil
}

func (a *Agent) hostname(json.RawMessage) (any, error) {
	f := a.Hostname
	if f == nil {
		f = os.Hostname
	}
	h, err := f()
	if err != nil {
		return nil, Errorf("cannot get host name: %v", err)
	}
	return map[string]string{"host-name": h}, nil
}

func (a *Agent) time(json.RawMessage) (any, error) {
	f := a.Now
	if f == nil {
		f = time.Now
	}
	return f().UnixNano(), nil
}

// SystemInterfaces lists the host's interfaces in guest-network-get-interfaces
// form.
func SystemInterfaces() ([]Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	out := make([]Interface, 0, len(ifs))
	for _, ifc := range ifs {
		it := Interface{Name: ifc.Name, HardwareAddress: ifc.HardwareAddr.String()}
		if it.HardwareAddress == "" {
			it.HardwareAddress = "00:00:00:00:00:00"
		}
		addrs, err := ifc.Addrs()
		if err == nil {
			for _, ad := range addrs {
				ipn, ok := ad.(*net.IPNet)
				if !ok {
					continue
				}
				ones, _ := ipn.Mask.Size()
				ip := IPAddress{Type: "ipv6", Address: ipn.IP.String(), Prefix: ones}
				if ipn.IP.To4() != nil {
					ip.Type = "ipv4"
					ip.Address = ipn.IP.To4().String()
				}
				it.IPAddresses = append(it.IPAddresses, ip)
			}
		}
		out = append(out, it)
	}
	return out, nil
}

// SystemOSInfo reads /etc/os-release and uname.
func SystemOSInfo() (*OSInfo, error) {
	info := &OSInfo{}
	info.KernelRelease, info.KernelVersion, info.Machine = uname()
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		kv := ParseOSRelease(string(b))
		info.ID, info.Name, info.PrettyName = kv["ID"], kv["NAME"], kv["PRETTY_NAME"]
		info.Version, info.VersionID = kv["VERSION"], kv["VERSION_ID"]
	}
	return info, nil
}

// ParseOSRelease parses os-release(5) KEY=value lines.
func ParseOSRelease(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		m[k] = v
	}
	return m
}

// Splitter splits the host's byte stream into requests, like QEMU's JSON
// streamer: it tracks brace/bracket depth and strings, emits each complete
// top-level value, discards 0xFF bytes (and any partial request before them),
// and emits stray non-JSON text at a newline so it can be answered with an
// error. A request longer than maxRequest is read to its end without being
// kept and emitted as tooLarge, so it gets one error reply and nothing of
// it is taken for a further request.
type Splitter struct {
	buf      []byte
	n        int // bytes of the current request, kept or not
	depth    int
	inString bool
	escape   bool
}

// tooLarge is what Feed emits for a request longer than maxRequest.
const tooLarge = "<request too large>"

// Reset discards any partial request.
func (s *Splitter) Reset() {
	if s.n > maxRequest {
		s.buf = nil // do not hold on to a large buffer
	}
	s.buf = s.buf[:0]
	s.n, s.depth, s.inString, s.escape = 0, 0, false, false
}

func (s *Splitter) add(c byte) {
	s.n++
	if s.n <= maxRequest {
		s.buf = append(s.buf, c)
	}
}

// Feed consumes one byte and returns a complete request, or nil.
func (s *Splitter) Feed(c byte) []byte {
	if c == 0xFF {
		s.Reset()
		return nil
	}
	if s.depth == 0 {
		switch c {
		case ' ', '\t', '\r':
			if s.n > 0 {
				s.add(c)
			}
			return nil
		case '\n':
			if s.n == 0 {
				return nil
			}
			return s.take()
		case '{', '[':
			// Stray text before a value stays in the buffer and makes
			// the request fail to parse (reported as GenericError).
			s.depth = 1
			s.add(c)
			return nil
		default:
			s.add(c)
			return nil
		}
	}
	s.add(c)
	switch {
	case s.inString:
		switch {
		case s.escape:
			s.escape = false
		case c == '\\':
			s.escape = true
		case c == '"':
			s.inString = false
		}
	case c == '"':
		s.inString = true
	case c == '{' || c == '[':
		s.depth++
	case c == '}' || c == ']':
		s.depth--
		if s.depth == 0 {
			return s.take()
		}
	}
	return nil
}

// feedRun consumes, inside a string, the longest prefix of p that holds no
// quote, backslash or 0xFF (bytes that change the splitter's state) and
// returns its length: what Feed would do byte by byte, in one step, so a
// request carrying megabytes of base64 is not split a byte at a time.
func (s *Splitter) feedRun(p []byte) int {
	if !s.inString || s.escape {
		return 0
	}
	n := 0
	for n < len(p) && p[n] != '"' && p[n] != '\\' && p[n] != 0xFF {
		n++
	}
	if n == 0 {
		return 0
	}
	if room := maxRequest - s.n; room > 0 {
		s.buf = append(s.buf, p[:min(n, room)]...)
	}
	s.n += n
	return n
}

func (s *Splitter) take() []byte {
	out := []byte(tooLarge)
	if s.n <= maxRequest {
		out = append([]byte(nil), s.buf...)
	}
	s.Reset()
	return out
}

// Serve reads requests from r and writes replies to w until r returns an
// error, which is returned (io.EOF at end of input).
func (a *Agent) Serve(r io.Reader, w io.Writer) error {
	br := bufio.NewReader(r)
	var sp Splitter
	for {
		if run, _ := br.Peek(br.Buffered()); len(run) > 0 {
			if n := sp.feedRun(run); n > 0 {
				br.Discard(n)
				continue
			}
		}
		c, err := br.ReadByte()
		if err != nil {
			return err
		}
		req := sp.Feed(c)
		if req == nil {
			continue
		}
		reply, delim, after := a.Handle(req)
		if reply != nil {
			var out []byte
			if delim {
				out = append(out, 0xFF)
			}
			out = append(out, reply...)
			out = append(out, '\n')
			a.mu.Lock()
			_, werr := w.Write(out)
			a.mu.Unlock()
			if werr != nil {
				a.logf("write reply: %v", werr)
			}
		}
		if after != nil {
			after()
		}
	}
}
