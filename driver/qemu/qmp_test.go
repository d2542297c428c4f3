package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver"
)

// fakeQMP serves QMP on a Unix socket with scripted behaviour: the fake sits
// at the protocol boundary, the client under test is the real one.
func fakeQMP(t *testing.T, handle func(cmd string, w *bufio.Writer) bool, greeting string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				w := bufio.NewWriter(conn)
				w.WriteString(greeting + "\r\n")
				w.Flush()
				sc := bufio.NewScanner(conn)
				for sc.Scan() {
					var req struct {
						Execute string          `json:"execute"`
						ID      json.RawMessage `json:"id"`
					}
					json.Unmarshal(sc.Bytes(), &req)
					if req.Execute == "qmp_capabilities" {
						w.WriteString(`{"return": {}, "id": ` + string(req.ID) + "}\r\n")
						w.Flush()
						continue
					}
					if !handle(req.Execute+" "+string(req.ID), w) {
						return
					}
					w.Flush()
				}
			}()
		}
	}()
	return sock
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`

func TestQMPExecute(t *testing.T) {
	sock := fakeQMP(t, func(cmd string, w *bufio.Writer) bool {
		name, id, _ := strings.Cut(cmd, " ")
		switch name {
		case "query-status":
			// An event and a stale reply arrive before the answer.
			w.WriteString(`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\r\n")
			w.WriteString(`{"return": {"status": "old"}, "id": "vmfest-0"}` + "\r\n")
			w.WriteString(`{"return": {"running": false, "status": "paused"}, "id": ` + id + "}\r\n")
		case "bogus":
			w.WriteString(`{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": ` + id + "}\r\n")
		case "garbage":
			w.WriteString("not json\r\n")
		}
		return true
	}, greeting)
	ctx := context.Background()
	st, err := QueryStatus(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != "paused" || st.Running {
		t.Fatalf("status = %+v", st)
	}
	_, err = RunQMP(ctx, sock, "bogus", nil)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("err = %v", err)
	}
	if _, err := RunQMP(ctx, sock, "garbage", nil); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Fatalf("err = %v", err)
	}
}

func TestQMPUnresponsiveIsBounded(t *testing.T) {
	sock := fakeQMP(t, func(cmd string, w *bufio.Writer) bool {
		time.Sleep(5 * time.Second) // never answers in time
		return false
	}, greeting)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	begun := time.Now()
	_, err := RunQMP(ctx, sock, "query-status", nil)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want a timeout", err)
	}
	if d := time.Since(begun); d > 3*time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestQMPNotAServer(t *testing.T) {
	sock := fakeQMP(t, func(string, *bufio.Writer) bool { return false }, `{"hello": 1}`)
	if _, err := DialQMP(context.Background(), sock); err == nil || !strings.Contains(err.Error(), "not a QMP server") {
		t.Fatalf("err = %v", err)
	}
	if _, err := DialQMP(context.Background(), filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Fatal("dial of a missing socket succeeded")
	}
}

// fakeAgent is a guest agent that starts answering only after a delay, as a
// booting guest does, and answers each sync it has buffered.
func fakeAgent(t *testing.T, delay time.Duration) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qga.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		time.Sleep(delay)
		r := bufio.NewReader(conn)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimLeft(line, "\xff")
			var req struct {
				Execute   string `json:"execute"`
				Arguments struct {
					ID int64 `json:"id"`
				} `json:"arguments"`
			}
			if json.Unmarshal([]byte(line), &req) != nil {
				continue
			}
			switch req.Execute {
			case "guest-sync-delimited":
				b, _ := json.Marshal(map[string]any{"return": req.Arguments.ID})
				conn.Write(append(append([]byte{0xff}, b...), '\n'))
			case "guest-network-get-interfaces":
				conn.Write([]byte(`{"return": [{"name": "eth0", "hardware-address": "52:54:00:00:00:01", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24}]}]}` + "\n"))
			default:
				conn.Write([]byte(`{"error": {"class": "CommandNotFound", "desc": "no"}}` + "\n"))
			}
		}
	}()
	return sock
}

func TestAgentSyncAfterDelay(t *testing.T) {
	sock := fakeAgent(t, 700*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, err := DialAgent(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ifs, err := driver.Interfaces(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].IPAddresses[0].Address != "10.0.2.15" {
		t.Fatalf("interfaces = %+v", ifs)
	}
	_, err = a.Execute(ctx, "guest-frobnicate", nil)
	var ae *AgentError
	if !errors.As(err, &ae) || ae.Class != "CommandNotFound" {
		t.Fatalf("err = %v", err)
	}
}

func TestAgentSilentIsBounded(t *testing.T) {
	sock := fakeAgent(t, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := DialAgent(ctx, sock); !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want a timeout", err)
	}
}

// TestQMPStaleOutputBeforeGreeting: QEMU can send a previous client's
// unsent reply before the greeting; the client skips it.
func TestQMPStaleOutputBeforeGreeting(t *testing.T) {
	stale := `{"return": {"status": "stale"}, "id": "vmfest-1"}` + "\r\n" + `{"event": "RESUME"}` + "\r\n"
	sock := fakeQMP(t, func(cmd string, w *bufio.Writer) bool {
		_, id, _ := strings.Cut(cmd, " ")
		w.WriteString(`{"return": {"running": true, "status": "running"}, "id": ` + id + "}\r\n")
		return true
	}, stale+greeting)
	st, err := QueryStatus(context.Background(), sock)
	if err != nil || st.Status != "running" {
		t.Fatalf("status = %+v, %v", st, err)
	}
}

// TestAgentExecuteSkipsOtherLines: a reply is the line that echoes the
// command's id (or carries none); late answers to earlier syncs and replies
// to other ids before it are skipped, and guest-shutdown does not wait for
// a reply that never comes.
func TestAgentExecuteSkipsOtherLines(t *testing.T) {
	tests := []struct {
		name    string
		command string
		before  string // lines the agent sends ahead of the reply
		reply   string // %s is the request's id
		want    string
		wantErr string
	}{
		{"echoed id", "guest-ping", "", `{"return": {"ok": 1}, "id": %s}`, `{"ok": 1}`, ""},
		{"no id", "guest-ping", "", `{"return": 7}`, `7`, ""},
		{"late sync", "guest-ping", "\xff{\"return\": 12345}\n", `{"return": 8, "id": %s}`, `8`, ""},
		{"stray sync byte", "guest-ping", `{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\ufffd'"}}` + "\n", `{"return": 9, "id": %s}`, `9`, ""},
		{"other id", "guest-ping", `{"return": "stale", "id": "vmfest-0-1"}` + "\n" + `{"return": "num", "id": 3}` + "\n", `{"return": "fresh", "id": %s}`, `"fresh"`, ""},
		{"error", "guest-frobnicate", "", `{"error": {"class": "CommandNotFound", "desc": "no"}, "id": %s}`, "", "guest agent guest-frobnicate: CommandNotFound: no"},
		{"empty", "guest-ping", "", `{"id": %s}`, "", "neither return nor error"},
		{"malformed", "guest-ping", "", `{"return": `, "", "malformed reply"},
		{"shutdown", "guest-shutdown", "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			t.Cleanup(func() { client.Close(); server.Close() })
			go func() {
				var req struct {
					Execute string          `json:"execute"`
					ID      json.RawMessage `json:"id"`
				}
				line, err := bufio.NewReader(server).ReadBytes('\n')
				if err != nil || json.Unmarshal(line, &req) != nil || req.Execute != tt.command {
					server.Close()
					return
				}
				if tt.reply != "" {
					server.Write([]byte(tt.before + strings.ReplaceAll(tt.reply, "%s", string(req.ID)) + "\n"))
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := newAgent(&lineConn{conn: client}).Execute(ctx, tt.command, nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if tt.name == "error" {
					var ae *AgentError
					if !errors.As(err, &ae) || ae.Class != "CommandNotFound" {
						t.Fatalf("err = %#v, want an *AgentError", err)
					}
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("Execute = %s, %v; want %s", got, err, tt.want)
			}
		})
	}
}
