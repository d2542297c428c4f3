package image

import "bytes"

// MaxMetaDepth bounds how deeply a metadata document (.meta in EDN, JSON
// or YAML) may nest. An image spec needs about six levels (hardware,
// network, nat-rules, a rule); the decoders recurse once per level, so a
// document nested a million deep would take a gigabyte to decode.
const MaxMetaDepth = 32

// ednDepth is the deepest nesting of lists, vectors, maps and sets in an
// EDN document, found by a scan that skips strings, character literals
// and comments. Unbalanced closers are ignored: the decoder reports them.
func ednDepth(data []byte) int {
	depth, deepest := 0, 0
	for i := 0; i < len(data); i++ {
		switch data[i] {
		case ';':
			if j := bytes.IndexByte(data[i:], '\n'); j >= 0 {
				i += j
			} else {
				i = len(data)
			}
		case '"':
			for i++; i < len(data) && data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
				}
			}
		case '\\':
			i++ // a character literal such as \( or \"
		case '(', '[', '{':
			depth++
			deepest = max(deepest, depth)
		case ')', ']', '}':
			depth = max(depth-1, 0)
		}
	}
	return deepest
}

// yamlDepth bounds the nesting of a YAML document (JSON included, as
// YAML's flow style) from above: per line, the block levels open (a stack
// of indentations), the sequence entries that open on the line ("- - x"),
// and flow brackets. Quoted scalars and comments are skipped, block
// scalars (| and >) are passed over. It may count a level too many on odd
// input, never one too few for brackets and indentation.
func yamlDepth(data []byte) int {
	var (
		deepest, flow int
		indents       []int
		quote         byte // the open quote, 0 outside a quoted scalar
		blockIndent   = -1 // inside a block scalar: its parent's indentation
	)
	for line := range bytes.Lines(data) {
		line = bytes.TrimRight(line, "\r\n")
		indent := len(line) - len(bytes.TrimLeft(line, " "))
		body := line[indent:]
		if blockIndent >= 0 {
			if len(bytes.TrimSpace(line)) == 0 || indent > blockIndent {
				continue
			}
			blockIndent = -1
		}
		if quote == 0 && flow == 0 {
			if len(bytes.TrimSpace(body)) == 0 || body[0] == '#' {
				continue
			}
			for len(indents) > 0 && indents[len(indents)-1] > indent {
				indents = indents[:len(indents)-1]
			}
			if len(indents) == 0 || indents[len(indents)-1] < indent {
				indents = append(indents, indent)
			}
		}
		level := len(indents) + flow
		prev := byte(0) // the last non-space character outside a scalar
		lastValue := -1 // where the last ": " or "- " value starts
		for i := 0; i < len(body); i++ {
			c := body[i]
			if quote != 0 {
				switch {
				case quote == '"' && c == '\\':
					i++
				case c == quote:
					quote = 0
					prev = c
				}
				continue
			}
			switch c {
			case ' ', '\t':
				continue
			case '#':
				if i == 0 || body[i-1] == ' ' || body[i-1] == '\t' {
					i = len(body)
					continue
				}
			case '"', '\'':
				if prev == 0 || bytes.IndexByte([]byte(":-[{,?"), prev) >= 0 {
					quote = c
					continue
				}
			case '-':
				if flow == 0 && (prev == 0 || prev == '-') && (i+1 == len(body) || body[i+1] == ' ') {
					level++
					lastValue = i + 1
				}
			case ':':
				if i+1 == len(body) || body[i+1] == ' ' {
					lastValue = i + 1
				}
			case '[', '{':
				flow++
				level++
			case ']', '}':
				flow = max(flow-1, 0)
			}
			deepest = max(deepest, level)
			prev = c
		}
		deepest = max(deepest, level)
		if quote == 0 && flow == 0 && lastValue >= 0 {
			v := bytes.TrimSpace(body[lastValue:])
			if len(v) > 0 && (v[0] == '|' || v[0] == '>') {
				blockIndent = indent
			}
		}
	}
	return deepest
}
