// Package posixacl reads and writes POSIX access control lists in the two
// forms a root filesystem brings them in: the value of the
// system.posix_acl_access and system.posix_acl_default extended attributes
// as the Linux VFS hands it out (getxattr(2), tar's SCHILY.xattr records:
// version 2, 8-byte entries), and the text getfacl prints and GNU tar's
// --acls stores (SCHILY.acl.access). image/tree carries ACLs in the xattr
// form; a filesystem writer turns Entries into its own on-disk encoding.
//
// Every ACL returned is valid as the kernel's posix_acl_valid sees it
// (owner, group and other entries exactly once, a mask when there are
// named entries, each named id once) and in its canonical order, so
// writing one never ends in EINVAL on the booted system.
package posixacl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Tag says what an entry is about; the values are the kernel's ACL_* tags,
// shared by the xattr form and ext4's on-disk form.
type Tag uint16

// The entry tags, in the order a valid ACL lists them.
const (
	UserObj  Tag = 0x01 // the owner
	User     Tag = 0x02 // a named user
	GroupObj Tag = 0x04 // the owning group
	Group    Tag = 0x08 // a named group
	Mask     Tag = 0x10 // the most named entries and the group may get
	Other    Tag = 0x20 // everyone else
)

// Named reports whether entries with this tag carry a user or group id.
func (t Tag) Named() bool { return t == User || t == Group }

func (t Tag) String() string {
	switch t {
	case UserObj, User:
		return "user"
	case GroupObj, Group:
		return "group"
	case Mask:
		return "mask"
	case Other:
		return "other"
	}
	return fmt.Sprintf("tag %#x", uint16(t))
}

// Entry is one line of an ACL. Perm holds read (4), write (2) and execute
// (1); ID is a uid or gid for User and Group entries and unused otherwise.
type Entry struct {
	Tag  Tag
	Perm uint16
	ID   uint32
}

// ACL is a list of entries.
type ACL []Entry

// The xattr form: a version-2 header, then tag, permissions and id per
// entry, little-endian; ids of unnamed entries are undefinedID.
const (
	xattrVersion = 2
	headerSize   = 4
	entrySize    = 8
	undefinedID  = 0xFFFFFFFF
)

// ErrInvalid marks an ACL the kernel would refuse.
var ErrInvalid = errors.New("invalid POSIX ACL")

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// ParseXattr decodes and validates the value of a system.posix_acl_*
// extended attribute.
func ParseXattr(b []byte) (ACL, error) {
	le := binary.LittleEndian
	if len(b) < headerSize || le.Uint32(b) != xattrVersion {
		return nil, invalid("no version %d header (is it already a filesystem's own encoding?)", xattrVersion)
	}
	if (len(b)-headerSize)%entrySize != 0 {
		return nil, invalid("%d bytes of entries, not a multiple of %d", len(b)-headerSize, entrySize)
	}
	var a ACL
	for off := headerSize; off < len(b); off += entrySize {
		e := Entry{Tag: Tag(le.Uint16(b[off:])), Perm: le.Uint16(b[off+2:])}
		if e.Tag.Named() {
			e.ID = le.Uint32(b[off+4:])
		}
		a = append(a, e)
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return a, nil
}

// Xattr encodes the ACL as a system.posix_acl_* extended attribute value.
func (a ACL) Xattr() []byte {
	le := binary.LittleEndian
	out := le.AppendUint32(make([]byte, 0, headerSize+entrySize*len(a)), xattrVersion)
	for _, e := range a {
		id := uint32(undefinedID)
		if e.Tag.Named() {
			id = e.ID
		}
		out = le.AppendUint16(out, uint16(e.Tag))
		out = le.AppendUint16(out, e.Perm)
		out = le.AppendUint32(out, id)
	}
	return out
}

// Validate checks what the kernel's posix_acl_valid checks, and the order
// it expects: owner, named users by uid, owning group, named groups by gid,
// mask, other.
func (a ACL) Validate() error {
	seen := map[Tag]int{}
	var named int
	for i, e := range a {
		switch e.Tag {
		case UserObj, User, GroupObj, Group, Mask, Other:
		default:
			return invalid("entry %d has unknown tag %#x", i, uint16(e.Tag))
		}
		if e.Perm&^7 != 0 {
			return invalid("entry %d (%s) has permissions %#o beyond rwx", i, e.Tag, e.Perm)
		}
		if i > 0 {
			prev := a[i-1]
			if e.Tag < prev.Tag || (e.Tag == prev.Tag && (!e.Tag.Named() || e.ID <= prev.ID)) {
				return invalid("entry %d (%s %s) is out of order or repeated", i, e.Tag, idText(e))
			}
		}
		seen[e.Tag]++
		if e.Tag.Named() {
			named++
		}
	}
	for _, t := range []Tag{UserObj, GroupObj, Other} {
		if seen[t] != 1 {
			return invalid("no %s entry (owner, group and other must each appear once)", objName(t))
		}
	}
	if named > 0 && seen[Mask] == 0 {
		return invalid("named user or group entries without a mask entry")
	}
	return nil
}

func objName(t Tag) string {
	switch t {
	case UserObj:
		return "user::"
	case GroupObj:
		return "group::"
	}
	return t.String() + "::"
}

func idText(e Entry) string {
	if e.Tag.Named() {
		return strconv.FormatUint(uint64(e.ID), 10)
	}
	return ""
}

// Resolver maps a user name (for tag User) or a group name (for tag Group)
// in ACL text to its id; ok is false when the name is unknown.
type Resolver func(tag Tag, name string) (id uint32, ok bool)

// ParseText reads an ACL in the text form of acl_to_text(3), getfacl and
// tar: entries separated by newlines or commas, each
// "type:qualifier:perms" with type user/u, group/g, mask/m or other/o, an
// empty qualifier for the owner, owning group, mask and other, and perms
// of r, w, x and -. Comments ("#…", also getfacl's "#effective:") are
// ignored. A numeric qualifier is an id; a name is looked up with resolve
// (nil refuses names), unless star's fourth field gives the id
// ("user:joe:rwx:1000"). The result is sorted into canonical order and
// validated.
func ParseText(text string, resolve Resolver) (ACL, error) {
	var a ACL
	for _, field := range strings.FieldsFunc(text, func(r rune) bool { return r == '\n' || r == ',' }) {
		if i := strings.IndexByte(field, '#'); i >= 0 {
			field = field[:i]
		}
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		e, err := parseEntry(field, resolve)
		if err != nil {
			return nil, err
		}
		a = append(a, e)
	}
	sort.SliceStable(a, func(i, j int) bool {
		if a[i].Tag != a[j].Tag {
			return a[i].Tag < a[j].Tag
		}
		return a[i].ID < a[j].ID
	})
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("ACL %q: %w", text, err)
	}
	return a, nil
}

func parseEntry(field string, resolve Resolver) (Entry, error) {
	parts := strings.Split(field, ":")
	if len(parts) < 3 || len(parts) > 4 {
		return Entry{}, invalid("entry %q is not type:qualifier:permissions", field)
	}
	kind, qual, perms := strings.TrimSpace(parts[0]), strings.TrimSpace(parts[1]), strings.TrimSpace(parts[2])
	var e Entry
	switch kind {
	case "user", "u":
		e.Tag = UserObj
		if qual != "" {
			e.Tag = User
		}
	case "group", "g":
		e.Tag = GroupObj
		if qual != "" {
			e.Tag = Group
		}
	case "mask", "m":
		e.Tag = Mask
	case "other", "o":
		e.Tag = Other
	default:
		return Entry{}, invalid("entry %q has unknown type %q", field, kind)
	}
	if !e.Tag.Named() && qual != "" {
		return Entry{}, invalid("entry %q: a %s entry takes no qualifier", field, e.Tag)
	}
	for _, c := range perms {
		switch c {
		case 'r':
			e.Perm |= 4
		case 'w':
			e.Perm |= 2
		case 'x':
			e.Perm |= 1
		case '-':
		default:
			return Entry{}, invalid("entry %q: permission %q is not r, w, x or -", field, c)
		}
	}
	if !e.Tag.Named() {
		return e, nil
	}
	if len(parts) == 4 {
		qual = strings.TrimSpace(parts[3])
	}
	if id, err := strconv.ParseUint(qual, 10, 32); err == nil {
		e.ID = uint32(id)
		return e, nil
	}
	if resolve != nil {
		if id, ok := resolve(e.Tag, qual); ok {
			e.ID = id
			return e, nil
		}
	}
	return Entry{}, fmt.Errorf("ACL entry %q names %s %q, which has no known id", field, e.Tag, qual)
}

// Text renders the ACL in getfacl's form with numeric ids, one entry a
// line, for messages and tests.
func (a ACL) Text() string {
	var b strings.Builder
	for _, e := range a {
		fmt.Fprintf(&b, "%s:%s:%s\n", e.Tag, idText(e), permText(e.Perm))
	}
	return b.String()
}

func permText(p uint16) string {
	out := []byte("---")
	if p&4 != 0 {
		out[0] = 'r'
	}
	if p&2 != 0 {
		out[1] = 'w'
	}
	if p&1 != 0 {
		out[2] = 'x'
	}
	return string(out)
}
