package profiles

import (
	"fmt"
	"io/fs"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Error is one problem found in a profile, with the place it was found.
// Parse joins every Error it finds with errors.Join, so callers can both
// print the lot and errors.As one out.
type Error struct {
	Source string // file name or other label given to Parse
	Line   int    // 1-based; 0 when the YAML parser did not say
	Column int    // 1-based; 0 when unknown
	Msg    string
}

func (e *Error) Error() string {
	switch {
	case e.Line > 0 && e.Column > 0:
		return fmt.Sprintf("%s:%d:%d: %s", e.Source, e.Line, e.Column, e.Msg)
	case e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.Source, e.Line, e.Msg)
	default:
		return fmt.Sprintf("%s: %s", e.Source, e.Msg)
	}
}

// position is where a node starts in the source.
type position struct{ line, col int }

// decoder walks a yaml.Node tree into Go values by reflection, strictly:
// unknown keys, duplicate keys, aliases and wrong scalar types are errors,
// and every value's position is remembered under its path (for example
// "services.enable[1]") so that validation can point at it afterwards.
// yaml.v3's own Decode stops at the first type error and loses positions;
// walking the nodes is how we report all of them, each with its line.
type decoder struct {
	source string
	errs   []*Error
	pos    map[string]position // path -> position of the value node
	keyPos map[string]position // path -> position of its key (mappings only)
	failed map[string]bool     // paths whose value could not be decoded
}

func newDecoder(source string) *decoder {
	return &decoder{
		source: source,
		pos:    map[string]position{},
		keyPos: map[string]position{},
		failed: map[string]bool{},
	}
}

func (d *decoder) errAt(p position, format string, args ...any) {
	d.errs = append(d.errs, &Error{Source: d.source, Line: p.line, Column: p.col, Msg: fmt.Sprintf(format, args...)})
}

func nodePos(n *yaml.Node) position { return position{n.Line, n.Column} }

var (
	durationType = reflect.TypeOf(time.Duration(0))
	fileModeType = reflect.TypeOf(fs.FileMode(0))
	idRangeType  = reflect.TypeOf(IDRange{})
)

// decode stores node into v (settable), recording path's position.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	d.pos[path] = nodePos(n)
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		// Aliases would let one line stand for many values (and are the
		// classic way to make a small YAML file expand to gigabytes).
		d.fail(n, path, "%sanchors and aliases are not supported in profiles; write the value out", label(path))
		return
	}
	t := v.Type()
	switch {
	case t == durationType:
		d.decodeDuration(n, v, path)
		return
	case t == fileModeType:
		d.decodeFileMode(n, v, path)
		return
	case t == idRangeType:
		d.decodeIDRange(n, v, path)
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		d.decodeSlice(n, v, path)
	case reflect.Map:
		d.decodeMap(n, v, path)
	case reflect.String:
		if s, ok := d.scalar(n, path, "!!str", "a string"); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		if s, ok := d.scalar(n, path, "!!bool", "true or false"); ok {
			b, err := strconv.ParseBool(strings.ToLower(s))
			if err != nil {
				d.fail(n, path, "%sexpected true or false, found %q", label(path), s)
				return
			}
			v.SetBool(b)
		}
	case reflect.Int:
		if s, ok := d.scalar(n, path, "!!int", "an integer"); ok {
			i, err := strconv.ParseInt(s, 0, 64)
			if err != nil || int64(int(i)) != i {
				d.fail(n, path, "%sexpected an integer, found %q", label(path), s)
				return
			}
			v.SetInt(i)
		}
	default:
		// Only reachable if a field of an unsupported type is added to
		// Profile; the test that loads every profile catches it.
		d.fail(n, path, "%sinternal error: cannot decode into %s", label(path), t)
	}
}

func (d *decoder) fail(n *yaml.Node, path string, format string, args ...any) {
	d.failed[path] = true
	d.errAt(nodePos(n), format, args...)
}

// label prefixes a message with the path it concerns.
func label(path string) string {
	if path == "" {
		return ""
	}
	return path + ": "
}

// kindName names what a node holds, for "expected X, found Y" messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.DocumentNode:
		return "a document"
	}
	switch n.ShortTag() {
	case "!!null":
		return "nothing (null)"
	case "!!bool":
		return "a boolean " + n.Value
	case "!!int":
		return "an integer " + n.Value
	case "!!float":
		return "a number " + n.Value
	case "!!str":
		return fmt.Sprintf("the string %q", n.Value)
	}
	return fmt.Sprintf("%s %q", n.ShortTag(), n.Value)
}

// scalar returns a scalar node's text if its resolved tag is want.
func (d *decoder) scalar(n *yaml.Node, path, want, wantName string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != want {
		hint := ""
		if want == "!!str" && n.Kind == yaml.ScalarNode && n.ShortTag() != "!!null" {
			hint = fmt.Sprintf(" (quote it if you meant the text %q)", n.Value)
		}
		d.fail(n, path, "%sexpected %s, found %s%s", label(path), wantName, kindName(n), hint)
		return "", false
	}
	return n.Value, true
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// fields maps YAML keys to struct field indexes, in declaration order.
func fields(t reflect.Type) (names []string, index map[string]int) {
	index = map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		names = append(names, tag)
		index[tag] = i
	}
	return names, index
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if isNull(n) {
		return // "services:" with nothing under it: all defaults
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "%sexpected a mapping (key: value lines), found %s", label(path), kindName(n))
		return
	}
	names, index := fields(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || (k.ShortTag() != "!!str" && k.ShortTag() != "!!merge") {
			d.errAt(nodePos(k), "%skeys must be plain names, found %s", label(path), kindName(k))
			continue
		}
		key := k.Value
		fi, known := index[key]
		if !known {
			d.errAt(nodePos(k), "%sunknown key %q (known keys: %s)", label(path), key, strings.Join(names, ", "))
			continue
		}
		if seen[key] {
			d.errAt(nodePos(k), "%skey %q appears twice (first on line %d)", label(path), key, d.keyPos[join(path, key)].line)
			continue
		}
		seen[key] = true
		d.keyPos[join(path, key)] = nodePos(k)
		d.decode(val, v.Field(fi), join(path, key))
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "%sexpected a list, found %s", label(path), kindName(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
	}
	v.Set(s)
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "%sexpected a mapping, found %s", label(path), kindName(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		d.fail(n, path, "%sinternal error: map keys must be strings", label(path))
		return
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			d.errAt(nodePos(k), "%skeys must be plain names, found %s", label(path), kindName(k))
			continue
		}
		p := join(path, k.Value)
		if _, dup := d.keyPos[p]; dup {
			d.errAt(nodePos(k), "%skey %q appears twice (first on line %d)", label(path), k.Value, d.keyPos[p].line)
			continue
		}
		d.keyPos[p] = nodePos(k)
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, elem, p)
		m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), elem)
	}
	v.Set(m)
}

func (d *decoder) decodeDuration(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.ScalarNode && (n.ShortTag() == "!!int" || n.ShortTag() == "!!float") {
		d.fail(n, path, "%sa duration needs a unit: write %q or %q, not %s", label(path), n.Value+"s", n.Value+"ms", n.Value)
		return
	}
	s, ok := d.scalar(n, path, "!!str", "a duration such as \"30s\"")
	if !ok {
		return
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.fail(n, path, "%s%q is not a duration: use Go's form, such as \"500ms\", \"30s\", \"5m\"", label(path), s)
		return
	}
	v.SetInt(int64(dur))
}

// decodeFileMode accepts "0644" (quoted) or 0644 (YAML 1.1 octal int): in
// either case the text must be octal with a leading zero, because a bare
// 644 would silently mean decimal 644 (01204) to a YAML parser.
func (d *decoder) decodeFileMode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!str" && n.ShortTag() != "!!int") {
		d.fail(n, path, "%sexpected an octal file mode such as \"0644\", found %s", label(path), kindName(n))
		return
	}
	if !strings.HasPrefix(n.Value, "0") {
		d.fail(n, path, "%sfile mode %q must be written in octal with a leading zero, such as \"0644\"", label(path), n.Value)
		return
	}
	m, err := strconv.ParseUint(strings.TrimPrefix(n.Value, "0o"), 8, 32)
	if err != nil || m > 0o7777 {
		d.fail(n, path, "%s%q is not a file mode: use octal permission bits from 0000 to 07777, such as \"0644\"", label(path), n.Value)
		return
	}
	perm := fs.FileMode(m) & fs.ModePerm
	if m&0o4000 != 0 {
		perm |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		perm |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		perm |= fs.ModeSticky
	}
	v.Set(reflect.ValueOf(perm))
}

func (d *decoder) decodeIDRange(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!str" && n.ShortTag() != "!!int") {
		d.fail(n, path, "%sexpected a servo ID range such as \"1-9\", found %s", label(path), kindName(n))
		return
	}
	r, err := ParseIDRange(n.Value)
	if err != nil {
		d.fail(n, path, "%s%v", label(path), err)
		return
	}
	v.Set(reflect.ValueOf(r))
}

// sortErrors orders errors by position so a reader goes top to bottom.
func sortErrors(errs []*Error) {
	sort.SliceStable(errs, func(i, j int) bool {
		if errs[i].Line != errs[j].Line {
			return errs[i].Line < errs[j].Line
		}
		return errs[i].Column < errs[j].Column
	})
}
