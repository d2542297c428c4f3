package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCLIModelCommands(t *testing.T) {
	home := t.TempDir()
	disk := make([]byte, 1<<20)
	disk[510], disk[511] = 0x55, 0xaa
	files := map[string][]byte{
		"base-1.0.raw":  disk,
		"base-1.0.meta": []byte(`{:os-family :debian :os-version "12" :username "admin"}`),
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, ok := files[strings.TrimPrefix(r.URL.Path, "/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)

	out, errOut, err := run(t, home, "model", "add", srv.URL+"/base-1.0.raw", "--username", "root")
	if err != nil || !strings.Contains(out, "installed image model base-1.0 (1 MiB, raw; not verified") {
		t.Fatalf("model add: %q %q %v", out, errOut, err)
	}
	if !strings.Contains(errOut, "download...") || !strings.Contains(errOut, "install...") {
		t.Errorf("no progress lines off a terminal: %q", errOut)
	}
	out, errOut, err = run(t, home, "setup-model", srv.URL+"/base-1.0.raw", "--id", "b2", "--json")
	var m map[string]any
	if err != nil || json.Unmarshal([]byte(out), &m) != nil || m["id"] != "b2" || errOut != "" {
		t.Fatalf("setup-model --json: %q %q %v", out, errOut, err)
	}
	out, _, err = run(t, home, "models", "--json")
	var list []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 2 {
		t.Fatalf("models --json: %q %v", out, err)
	}
	if spec := list[1]["spec"].(map[string]any); list[1]["id"] != "base-1.0" || spec["username"] != "root" || spec["os-family"] != "debian" {
		t.Errorf("flags over the EDN sidecar: %v", spec)
	}
	out, _, err = run(t, home, "model", "list")
	if err != nil || !strings.Contains(out, "base-1.0") || !strings.Contains(out, "debian 12") {
		t.Errorf("model list: %q %v", out, err)
	}
	out, _, err = run(t, home, "model", "show", "b2")
	if err != nil || !strings.Contains(out, "source-format: raw") {
		t.Errorf("model show: %q %v", out, err)
	}
	if _, _, err := run(t, home, "model", "add", srv.URL+"/base-1.0.raw"); err == nil || !strings.Contains(err.Error(), "--replace") {
		t.Errorf("add twice: %v", err)
	}
	if _, _, err := run(t, home, "model", "add", srv.URL+"/missing.qcow2"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("add 404: %v", err)
	}
	if _, _, err := run(t, home, "create", "vm", "--image", "b2", "--hardware", "micro"); err != nil {
		t.Fatal(err)
	}
	out, _, err = run(t, home, "model", "rm", "base-1.0", "b2")
	if err == nil || !strings.Contains(err.Error(), "in use by machines vm") || !strings.Contains(out, "removed image model base-1.0") {
		t.Errorf("model rm: %q %v", out, err)
	}
	if _, _, err := run(t, home, "destroy", "vm"); err != nil {
		t.Fatal(err)
	}
	if out, _, err := run(t, home, "model", "rm", "b2", "--json"); err != nil || !strings.Contains(out, `"b2"`) {
		t.Errorf("model rm --json: %q %v", out, err)
	}
}

func TestCLIHardwareAddRemove(t *testing.T) {
	home := t.TempDir()
	file := filepath.Join(home, "nano.yaml")
	os.WriteFile(file, []byte("memory-size: 128\nnetwork:\n  - attachment-type: nat\n"), 0o644)
	bad := filepath.Join(home, "bad.yaml")
	os.WriteFile(bad, []byte("memory-size: 128\ncolour: blue\n"), 0o644)

	if out, _, err := run(t, home, "hardware", "add", file); err != nil || out != "added hardware model nano\n" {
		t.Fatalf("hardware add: %q %v", out, err)
	}
	if out, _, err := run(t, home, "hardware", "add", file, "--name", "n2", "--json"); err != nil || !strings.Contains(out, `"memory-size": 128`) {
		t.Fatalf("hardware add --name --json: %q %v", out, err)
	}
	if out, _, err := run(t, home, "hardware", "list"); err != nil || !strings.Contains(out, "nano") || !strings.Contains(out, "n2") {
		t.Errorf("hardware list: %q %v", out, err)
	}
	for _, tt := range []struct {
		args []string
		says string
	}{
		{[]string{"hardware", "add", file}, "hardware rm nano"},
		{[]string{"hardware", "add", bad}, `unknown key "colour"`},
		{[]string{"hardware", "rm", "micro"}, "cannot be removed"},
		{[]string{"hardware", "rm", "ghost"}, "ghost"},
	} {
		if _, _, err := run(t, home, tt.args...); err == nil || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("%v: %v, want an error saying %q", tt.args, err, tt.says)
		}
	}
	if out, _, err := run(t, home, "hardware", "rm", "nano"); err != nil || out != "removed hardware model nano\n" {
		t.Errorf("hardware rm: %q %v", out, err)
	}
}
