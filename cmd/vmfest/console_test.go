package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestConsoleOverlap(t *testing.T) {
	lines := func(from, to int) string {
		var b strings.Builder
		for i := from; i < to; i++ {
			fmt.Fprintf(&b, "boot line %05d\n", i)
		}
		return b.String()
	}
	tests := []struct {
		name       string
		prev, next string
		want       string // what follow prints
	}{
		{"grew", "a\nb\n", "a\nb\nc\n", "c\n"},
		{"unchanged", "a\nb\n", "a\nb\n", ""},
		{"empty before", "", "a\n", "a\n"},
		{"new run", "old run\n", "new\n", "new\n"},
		{"short rotated", "x\ny\nz\n", "y\nz\nw\n", "w\n"},
		// serial.log.1 + serial.log, then serial.log rotated: the old
		// serial.log.1 is gone and the old serial.log is now serial.log.1.
		{"rotated", lines(0, 400), lines(200, 450), lines(400, 450)},
		{"rotated, nothing new", lines(0, 400), lines(200, 400), ""},
		{"repeated lines", strings.Repeat("same\n", 300), strings.Repeat("same\n", 200) + "new\n", "new\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := consoleOverlap([]byte(tt.prev), []byte(tt.next))
			if got := tt.next[k:]; got != tt.want {
				t.Errorf("follow prints %q, want %q", got, tt.want)
			}
		})
	}
}

// Every byte the log kept is printed once, whatever the reads see of its
// rotations.
func TestConsoleFollowRotation(t *testing.T) {
	var all bytes.Buffer
	var shown bytes.Buffer
	var cur, old []byte
	const cap = 4096
	prev := []byte(nil)
	for i := 0; i < 2000; i++ {
		line := fmt.Appendf(nil, "line %d\n", i)
		all.Write(line)
		if len(cur)+len(line) > cap {
			old, cur = cur, nil
		}
		cur = append(cur, line...)
		if i%7 == 0 {
			next := append(append([]byte(nil), old...), cur...)
			shown.Write(next[consoleOverlap(prev, next):])
			prev = next
		}
	}
	next := append(append([]byte(nil), old...), cur...)
	shown.Write(next[consoleOverlap(prev, next):])
	if !bytes.Equal(shown.Bytes(), all.Bytes()) {
		t.Fatalf("follow showed %d bytes of %d written (reads often enough to miss nothing)", shown.Len(), all.Len())
	}
}
