package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// nested is a document of about size bytes nested as deep as it can be.
func nested(kind string, size int) []byte {
	var open, close, head string
	switch kind {
	case "edn":
		head, open, close = "{:os-family :debian :hardware ", "{:a ", "}"
	case "edn-vector":
		head, open, close = "{:os-family :debian :description ", "[", "]"
	case "json":
		head, open, close = `{"os-family": "debian", "hardware": `, `{"a": `, "}"
	case "yaml-flow":
		head, open, close = "os-family: debian\nhardware: ", "[", "]"
	case "yaml-dash":
		head, open, close = "os-family: debian\nhardware:\n  ", "- ", ""
	}
	n := (size - len(head) - 2) / (len(open) + len(close))
	var b bytes.Buffer
	b.WriteString(head)
	b.WriteString(strings.Repeat(open, n))
	if kind == "yaml-dash" {
		b.WriteString("x\n")
	} else {
		b.WriteString(strings.Repeat(close, n))
		if kind == "edn" || kind == "edn-vector" || kind == "json" {
			b.WriteString("}")
		}
	}
	return b.Bytes()
}

// TestParseMetaRefusesDeepNesting: a 1 MiB document nested as deep as it
// goes (EDN maps and vectors, JSON, YAML flow and block) is refused before
// it is decoded, quickly and in bounded memory, naming the depth and the
// limit; documents at the limit still parse.
func TestParseMetaRefusesDeepNesting(t *testing.T) {
	for _, kind := range []string{"edn", "edn-vector", "json", "yaml-flow", "yaml-dash"} {
		t.Run(kind, func(t *testing.T) {
			data := nested(kind, 1<<20)
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := ParseMeta(data)
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrMeta) || !strings.Contains(err.Error(), "levels deep") || !strings.Contains(err.Error(), fmt.Sprint(MaxMetaDepth)) {
				t.Fatalf("err = %v, want a refusal naming the depth and the limit", err)
			}
			grew := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d bytes refused in %s, %d bytes allocated", len(data), took, grew)
			if grew > 4<<20 {
				t.Errorf("refusing it allocated %d bytes, want under 4 MiB", grew)
			}
		})
	}
}

func TestMetaDepthScan(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		edn  bool
		want int
	}{
		{"edn flat", `{:os-family :debian}`, true, 1},
		{"edn nested", `{:hardware {:network [{:nat-rules [{:name "web"}]}]}}`, true, 6},
		{"edn brackets in strings", `{:description "[[[[{{{{(((("}`, true, 1},
		{"edn brackets in comments", "; [[[[[[\n{:a 1}", true, 1},
		{"edn character literals", `{:a [\( \[ \{]}`, true, 2},
		{"edn escaped quote", `{:a "\"[[[["}`, true, 1},
		{"json", `{"a": [{"b": "[[["}]}`, false, 4}, // the document's own block level, then 3
		{"yaml block", "a:\n  b:\n    c: 1\n", false, 3},
		{"yaml dashes", "a:\n  - - - x\n", false, 5},
		{"yaml comment", "a: 1 # [[[[\n", false, 1},
		{"yaml quoted", "a: '[[[['\nb: \"{{{\"\n", false, 1},
		{"yaml apostrophe then brackets", "a: it's\nb: [[[[1]]]]\n", false, 5},
		{"yaml block scalar", "a: |\n  [[[[ {{{{\n  - - - -\nb: 1\n", false, 1},
		{"pretty json", "{\n  \"a\": {\n    \"b\": [\n      1\n    ]\n  }\n}\n", false, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got int
			if tt.edn {
				got = ednDepth([]byte(tt.doc))
			} else {
				got = yamlDepth([]byte(tt.doc))
			}
			if got != tt.want {
				t.Fatalf("depth = %d, want %d", got, tt.want)
			}
		})
	}
	// A spec nested as deep as an image spec goes still parses.
	if _, err := ParseMeta([]byte(`{:os-family :debian :hardware {:memory-size 512 :network [{:attachment-type :nat :nat-rules [{:name "web" :protocol :tcp :host-port 8080 :guest-port 80}]}]}}`)); err != nil {
		t.Fatalf("a deep but legitimate spec: %v", err)
	}
}

// TestSidecarCapped: a sidecar larger than MaxSidecar (a 1 MiB nested
// .meta, a huge SHA256SUMS), local or remote, is refused, not cut short,
// and quickly.
func TestSidecarCapped(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	gz := compressWith(t, CompressionGzip, readFile(t, raw))
	deep := nested("edn", 1<<20)
	sums := bytes.Repeat([]byte(strings.Repeat("0", 64)+"  other.img\n"), 2000)
	srv := serve(t, newFiles(map[string][]byte{
		"deep.raw.gz": gz, "deep.meta": deep,
		"sums/a.raw.gz": gz, "sums/SHA256SUMS": sums,
	}))
	local := filepath.Join(dir, "local")
	os.MkdirAll(local, 0o755)
	os.WriteFile(filepath.Join(local, "deep.raw.gz"), gz, 0o644)
	os.WriteFile(filepath.Join(local, "deep.meta"), deep, 0o644)
	for _, source := range []string{srv.URL + "/deep.raw.gz", srv.URL + "/sums/a.raw.gz", filepath.Join(local, "deep.raw.gz")} {
		t.Run(source, func(t *testing.T) {
			cfg := testConfig(t)
			_, err := prepare(t, cfg, source, Options{})
			if !errors.Is(err, ErrMeta) || !strings.Contains(err.Error(), fmt.Sprint(DefaultMaxSidecar)) {
				t.Fatalf("err = %v, want ErrMeta naming the limit", err)
			}
		})
	}
}

// TestSidecarSymlinksRefused: a .meta or checksum file beside a local
// source that is a symbolic link (to a file outside the directory) is
// refused and not read.
func TestSidecarSymlinksRefused(t *testing.T) {
	dir := t.TempDir()
	raw := rawDisk(t, dir)
	gz := compressWith(t, CompressionGzip, readFile(t, raw))
	outside := filepath.Join(dir, "outside")
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("{:os-family :debian :description \"secret\"}"), 0o600)
	for _, side := range []string{"img.meta", "img.raw.gz.sha256", "img.sha256", "SHA256SUMS"} {
		t.Run(side, func(t *testing.T) {
			d := filepath.Join(t.TempDir(), "models")
			os.MkdirAll(d, 0o755)
			src := filepath.Join(d, "img.raw.gz")
			os.WriteFile(src, gz, 0o644)
			if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(d, side)); err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(t)
			_, err := prepare(t, cfg, src, Options{})
			if !errors.Is(err, ErrMeta) || !strings.Contains(err.Error(), "symbolic link") {
				t.Fatalf("err = %v, want a refused symbolic link", err)
			}
		})
	}
	// A FIFO is not read either (nor waited on).
	d := t.TempDir()
	src := filepath.Join(d, "img.raw.gz")
	os.WriteFile(src, gz, 0o644)
	if err := unix.Mkfifo(filepath.Join(d, "img.meta"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := prepare(t, testConfig(t), src, Options{})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrMeta) || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("err = %v, want a refused FIFO", err)
		}
	case <-ctx.Done():
		t.Fatal("a FIFO .meta blocked the setup")
	}
}
