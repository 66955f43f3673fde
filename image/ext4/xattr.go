package ext4

import (
	"encoding/binary"
	"fmt"

	"github.com/lekiwi/heartbeat/image/posixacl"
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
		if le.Uint32(b[xhMagic:]) != xattrMagic {
			return nil, corrupt("inode %d: xattr block %d has no magic", in.Num, in.fileACL)
		}
		if n := le.Uint32(b[xhBlocks:]); n != 1 {
			return nil, corrupt("inode %d: xattr block %d says it spans %d blocks (the kernel accepts only 1)", in.Num, in.fileACL, n)
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

// aclToVFS converts a POSIX ACL from ext4's on-disk form to the xattr form
// of the Linux VFS, as the kernel's ext4_acl_from_disk and getxattr(2)
// would. The entries are taken as they are: this reads, it does not judge.
func aclToVFS(b []byte) ([]byte, error) {
	le := binary.LittleEndian
	if len(b) < aclDiskHeader || le.Uint32(b) != aclDiskVersion {
		return nil, corrupt("ACL without version %d header", aclDiskVersion)
	}
	var acl posixacl.ACL
	for off := aclDiskHeader; off < len(b); {
		if off+aclDiskShortEntry > len(b) {
			return nil, corrupt("ACL entry truncated")
		}
		e := posixacl.Entry{Tag: posixacl.Tag(le.Uint16(b[off:])), Perm: le.Uint16(b[off+2:])}
		size := aclDiskShortEntry
		if e.Tag.Named() {
			if off+aclDiskEntry > len(b) {
				return nil, corrupt("ACL entry id truncated")
			}
			e.ID, size = le.Uint32(b[off+aclDiskShortEntry:]), aclDiskEntry
		}
		acl = append(acl, e)
		off += size
	}
	return acl.Xattr(), nil
}

// aclToDisk converts a POSIX ACL from the VFS xattr form to ext4's, as the
// kernel's ext4_acl_to_disk does; an ACL the kernel would refuse to set is
// refused.
func aclToDisk(v []byte) ([]byte, error) {
	acl, err := posixacl.ParseXattr(v)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	out := le.AppendUint32(nil, aclDiskVersion)
	for _, e := range acl {
		out = le.AppendUint16(out, uint16(e.Tag))
		out = le.AppendUint16(out, e.Perm)
		if e.Tag.Named() {
			out = le.AppendUint32(out, e.ID)
		}
	}
	return out, nil
}
