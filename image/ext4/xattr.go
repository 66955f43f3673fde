package ext4

import (
	"encoding/binary"
	"fmt"
)

// Xattrs returns the extended attributes of an inode by full name
// ("security.capability"). POSIX ACLs are converted from ext4's compact
// on-disk form to the form getxattr(2) and tar's SCHILY.xattr use.
// Inline-data bookkeeping (system.data) is not reported.
func (fs *FS) Xattrs(in *Inode) (map[string][]byte, error) {
	x, err := fs.rawXattrs(in)
	if err != nil {
		return nil, err
	}
	delete(x, "system.data")
	for _, name := range []string{"system.posix_acl_access", "system.posix_acl_default"} {
		if v, ok := x[name]; ok {
			acl, err := aclToVFS(v)
			if err != nil {
				return nil, fmt.Errorf("inode %d %s: %w", in.Num, name, err)
			}
			x[name] = acl
		}
	}
	if len(x) == 0 {
		return nil, nil
	}
	return x, nil
}

func (fs *FS) rawXattrs(in *Inode) (map[string][]byte, error) {
	out := map[string][]byte{}
	le := binary.LittleEndian
	if fs.inodeSize > goodOldInodeSize {
		extra := uint64(le.Uint16(in.body[iExtraIsize:]))
		start := goodOldInodeSize + extra
		if start+4 <= uint64(len(in.body)) && le.Uint32(in.body[start:]) == xattrMagic {
			region := in.body[start+4:]
			if err := parseXattrs(region, region, out); err != nil {
				return nil, fmt.Errorf("inode %d in-body xattrs: %w", in.Num, err)
			}
		}
	}
	if in.fileACL != 0 {
		b, err := fs.readBlock(in.fileACL)
		if err != nil {
			return nil, fmt.Errorf("inode %d xattr block: %w", in.Num, err)
		}
		if le.Uint32(b) != xattrMagic {
			return nil, corrupt("inode %d: xattr block %d has no magic", in.Num, in.fileACL)
		}
		if err := parseXattrs(b[xattrBlockHeader:], b, out); err != nil {
			return nil, fmt.Errorf("inode %d xattr block %d: %w", in.Num, in.fileACL, err)
		}
	}
	return out, nil
}

// parseXattrs reads the entry table at entries; value offsets are relative
// to values.
func parseXattrs(entries, values []byte, out map[string][]byte) error {
	le := binary.LittleEndian
	for off := 0; off+4 <= len(entries) && le.Uint32(entries[off:]) != 0; {
		if off+xattrEntryHeader > len(entries) {
			return corrupt("xattr entry at %d truncated", off)
		}
		e := entries[off:]
		nameLen := int(e[xeNameLen])
		index := e[xeNameIndex]
		valOff := int(le.Uint16(e[xeValueOff:]))
		valInum := le.Uint32(e[xeValueIno:])
		valSize := int(le.Uint32(e[xeValueSize:]))
		if off+xattrEntryHeader+nameLen > len(entries) {
			return corrupt("xattr name at %d truncated", off)
		}
		prefix, ok := xattrPrefix(index)
		if !ok {
			return corrupt("xattr name index %d", index)
		}
		name := prefix + string(e[xeName:xeName+nameLen])
		if valInum != 0 {
			return fmt.Errorf("xattr %s is stored in its own inode (ea_inode), which this reader does not support", name)
		}
		if valSize < 0 || valOff+valSize > len(values) || valOff+valSize < valOff {
			return corrupt("xattr %s value of %d bytes at %d outside its %d-byte region", name, valSize, valOff, len(values))
		}
		out[name] = append([]byte(nil), values[valOff:valOff+valSize]...)
		off += (xattrEntryHeader + nameLen + 3) &^ 3
	}
	return nil
}

// POSIX ACL tags that carry an id.
const (
	aclUser  = 0x02
	aclGroup = 0x08
)

// aclToVFS converts ext4's ACL encoding (version 1, short entries without
// ids) to the xattr form of the Linux VFS (version 2, 8-byte entries).
func aclToVFS(b []byte) ([]byte, error) {
	le := binary.LittleEndian
	if len(b) < 4 || le.Uint32(b) != 1 {
		return nil, corrupt("ACL without version 1 header")
	}
	out := le.AppendUint32(nil, 2)
	for off := 4; off < len(b); {
		if off+4 > len(b) {
			return nil, corrupt("ACL entry truncated")
		}
		tag, perm := le.Uint16(b[off:]), le.Uint16(b[off+2:])
		id := uint32(0xFFFFFFFF)
		off += 4
		if tag == aclUser || tag == aclGroup {
			if off+4 > len(b) {
				return nil, corrupt("ACL entry id truncated")
			}
			id = le.Uint32(b[off:])
			off += 4
		}
		out = le.AppendUint16(out, tag)
		out = le.AppendUint16(out, perm)
		out = le.AppendUint32(out, id)
	}
	return out, nil
}
