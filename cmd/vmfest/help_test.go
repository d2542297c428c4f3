package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/internal/testutil"
	"github.com/vmfest/vmfest/model"
	"github.com/vmfest/vmfest/spec"
)

// TestCLIHelpEveryCommand walks the whole command tree (cobra's help and
// completion commands included) and runs each command's --help: exit 0,
// nothing on stderr, and a usage line naming the command on stdout, so
// no command is left without help or with a help that fails.
func TestCLIHelpEveryCommand(t *testing.T) {
	home := t.TempDir()
	root := newRootCommand(&bytes.Buffer{}, &bytes.Buffer{})
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var paths [][]string
	for _, c := range allCommands(root) {
		words := strings.Fields(c.CommandPath())[1:]
		paths = append(paths, words)
		for _, alias := range c.Aliases {
			if len(words) > 0 {
				paths = append(paths, append(slices.Clone(words[:len(words)-1]), alias))
			}
		}
	}
	if len(paths) < 30 {
		t.Fatalf("only %d commands and aliases found in the tree", len(paths))
	}
	for _, words := range paths {
		t.Run(strings.Join(append([]string{"vmfest"}, words...), " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, home, append(words, "--help")...)
			if code != 0 || errOut != "" {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			if !strings.Contains(out, "Usage:\n  vmfest") || strings.TrimSpace(out) == "" {
				t.Fatalf("no usage line:\n%s", out)
			}
			if len(words) > 0 && !strings.Contains(out, words[len(words)-1]) {
				t.Fatalf("the usage does not name %q:\n%s", words[len(words)-1], out)
			}
		})
	}
}

// jsonKeys returns the JSON object keys of t's fields (as encoding/json
// names them; embedded structs' keys included).
func jsonKeys(t reflect.Type) map[string]bool {
	keys := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			for k := range jsonKeys(f.Type) {
				keys[k] = true
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		keys[name] = true
	}
	return keys
}

// openAPIRequired returns the required keys of the API's component
// schema name (api/openapi.json).
func openAPIRequired(t *testing.T, name string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "api", "openapi.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Required []string `json:"required"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("api/openapi.json: %v", err)
	}
	s, ok := doc.Components.Schemas[name]
	if !ok {
		t.Fatalf("api/openapi.json has no schema %q", name)
	}
	return s.Required
}

// object is a JSON shape: the Go type whose keys an object may have, and
// the API schema whose required keys it must have ("" when the object is
// the CLI's own).
type object struct {
	typ    reflect.Type
	schema string
	// extra keys allowed beyond typ's (list's "error").
	extra []string
}

var (
	infoObject     = object{typ: reflect.TypeFor[vmfest.Info](), schema: "Info"}
	rowObject      = object{typ: reflect.TypeFor[vmfest.Info](), schema: "Info", extra: []string{"error"}}
	modelObject    = object{typ: reflect.TypeFor[model.ImageModel](), schema: "ImageModel"}
	networkObject  = object{typ: reflect.TypeFor[vmfest.Network](), schema: "Network"}
	hardwareObject = object{typ: reflect.TypeFor[hardwareItem]()}
	hwSpecObject   = object{typ: reflect.TypeFor[spec.Hardware]()}
	findingObject  = object{typ: reflect.TypeFor[vmfest.Finding]()}
	volumeObject   = object{typ: reflect.TypeFor[vmfest.Volume](), schema: "Volume"}
)

// check checks that o's keys are among the type's (and extra) and that
// the schema's required keys are there.
func (s object) check(t *testing.T, o map[string]any) {
	t.Helper()
	allowed := jsonKeys(s.typ)
	for _, k := range s.extra {
		allowed[k] = true
	}
	for k := range o {
		if !allowed[k] {
			t.Errorf("key %q is not one of %s's", k, s.typ)
		}
	}
	if s.schema == "" {
		return
	}
	for _, k := range openAPIRequired(t, s.schema) {
		if _, ok := o[k]; !ok {
			t.Errorf("no %q, which the API's %s requires: %v", k, s.schema, o)
		}
	}
}

// TestCLIJSONSchemas runs every command that prints JSON without a
// running machine, with --json, and checks that stdout parses and that
// each object has the keys of the API object it stands for (the Go
// type's JSON keys; api/openapi.json's required ones): one shape per kind
// of object, whichever command prints it.
func TestCLIJSONSchemas(t *testing.T) {
	home := t.TempDir()
	dir := t.TempDir()
	disk := filepath.Join(dir, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	raw := testutil.BootSectorDisk(t, filepath.Join(dir, "tiny-1.raw"))
	hw := filepath.Join(dir, "tiny.yaml")
	if err := os.WriteFile(hw, []byte("memory-size: 128\ncpu-count: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { runCLI(t, home, "destroy", "--force", "a", "b") })
	tests := []struct {
		args  []string
		array bool
		obj   object
	}{
		{args: []string{"create", "a", "--image", disk}, obj: infoObject},
		{args: []string{"create", "b", "--image", disk, "--hardware", hw}, obj: infoObject},
		{args: []string{"show", "a"}, obj: infoObject},
		{args: []string{"list"}, array: true, obj: rowObject},
		{args: []string{"ls"}, array: true, obj: rowObject},
		{args: []string{"stop", "a"}, obj: infoObject},
		{args: []string{"stop", "a", "b"}, array: true, obj: infoObject},
		{args: []string{"power-down", "a", "b"}, array: true, obj: infoObject},
		{args: []string{"model", "add", raw}, obj: modelObject},
		{args: []string{"setup-model", raw, "--id", "tiny-2"}, obj: modelObject},
		{args: []string{"model", "list"}, array: true, obj: modelObject},
		{args: []string{"models"}, array: true, obj: modelObject},
		{args: []string{"model", "show", "tiny-1"}, obj: modelObject},
		{args: []string{"model", "rm", "tiny-1", "tiny-2"}, array: true, obj: modelObject},
		{args: []string{"network", "create", "n1", "--kind", "internal"}, obj: networkObject},
		{args: []string{"network", "list"}, array: true, obj: networkObject},
		{args: []string{"network", "rm", "n1"}, obj: networkObject},
		{args: []string{"hardware", "add", hw}, obj: hardwareObject},
		{args: []string{"hardware", "list"}, array: true, obj: hardwareObject},
		{args: []string{"hardware", "show", "tiny"}, obj: hwSpecObject},
		{args: []string{"hardware", "rm", "tiny"}, obj: hardwareObject},
		{args: []string{"volume", "create", "v1", "--size", "1G"}, obj: volumeObject},
		{args: []string{"attach", "a", "v1"}, obj: infoObject},
		{args: []string{"volume", "list"}, array: true, obj: volumeObject},
		{args: []string{"volume", "show", "v1"}, obj: volumeObject},
		{args: []string{"detach", "a", "v1"}, obj: infoObject},
		{args: []string{"volume", "rm", "v1"}, obj: volumeObject},
		{args: []string{"doctor", "--dry-run"}, array: true, obj: findingObject},
		{args: []string{"destroy", "a", "b"}, array: true, obj: infoObject},
		{args: []string{"version"}, obj: object{typ: reflect.TypeFor[struct {
			Version string `json:"version"`
		}]()}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, home, append([]string{"--json"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var objs []map[string]any
			if tt.array {
				if err := json.Unmarshal([]byte(out), &objs); err != nil {
					t.Fatalf("stdout is not a JSON array of objects: %v\n%s", err, out)
				}
			} else {
				var o map[string]any
				if err := json.Unmarshal([]byte(out), &o); err != nil {
					t.Fatalf("stdout is not a JSON object: %v\n%s", err, out)
				}
				objs = []map[string]any{o}
			}
			for _, o := range objs {
				tt.obj.check(t, o)
			}
		})
	}
}

// TestCLICompletion holds the completion papercut: machine, image
// model, hardware model and network names complete from the state
// directory, arguments given already are not offered again, and --image
// and --hardware complete model names and still files.
func TestCLICompletion(t *testing.T) {
	home := t.TempDir()
	dir := t.TempDir()
	disk := filepath.Join(dir, "base.raw")
	testutil.BlankDisk(t, disk, 0o444)
	raw := testutil.BootSectorDisk(t, filepath.Join(dir, "img-1.raw"))
	for _, args := range [][]string{
		{"create", "web1", "--image", disk}, {"create", "web2", "--image", disk}, {"create", "db", "--image", disk},
		{"network", "create", "lab", "--kind", "internal"}, {"model", "add", raw},
	} {
		if code, _, errOut := runCLI(t, home, args...); code != 0 {
			t.Fatalf("%v: %s", args, errOut)
		}
	}
	t.Cleanup(func() { runCLI(t, home, "destroy", "web1", "web2", "db") })
	noFiles := ":" + itoa(int(cobra.ShellCompDirectiveNoFileComp))
	files := ":" + itoa(int(cobra.ShellCompDirectiveDefault))
	tests := []struct {
		args []string
		want []string
		dir  string
	}{
		{[]string{"start", ""}, []string{"db", "web1", "web2"}, noFiles},
		{[]string{"start", "w"}, []string{"web1", "web2"}, noFiles},
		{[]string{"destroy", "web1", ""}, []string{"db", "web2"}, noFiles},
		{[]string{"ssh", "d"}, []string{"db"}, noFiles},
		{[]string{"ssh", "db", ""}, nil, noFiles},
		{[]string{"show", "web1", ""}, nil, noFiles},
		{[]string{"model", "show", ""}, []string{"img-1"}, noFiles},
		{[]string{"model", "rm", "i"}, []string{"img-1"}, noFiles},
		{[]string{"hardware", "show", "m"}, []string{"micro", "medium"}, noFiles},
		{[]string{"network", "rm", ""}, []string{"lab", "vmfestnet0"}, noFiles}, // and the default network
		{[]string{"create", "x", "--image", ""}, []string{"img-1"}, files},
		{[]string{"create", "x", "--hardware", "s"}, []string{"small"}, files},
		{[]string{"network", "create", "y", "--kind", ""}, []string{"host-only", "internal"}, noFiles},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, home, append([]string{"__complete"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			got, directive := lines[:len(lines)-1], lines[len(lines)-1]
			if !slices.Equal(got, tt.want) && !(len(got) == 0 && len(tt.want) == 0) || directive != tt.dir {
				t.Fatalf("completions %q %s, want %q %s", got, directive, tt.want, tt.dir)
			}
		})
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
