package base

import (
	"fmt"
	"sort"
	"strings"

	"github.com/lekiwi/heartbeat/image/posixacl"
)

// aclXattrs maps tar's text ACL records to the extended attributes the
// kernel keeps them in.
var aclXattrs = map[string]string{
	"SCHILY.acl.access":  "system.posix_acl_access",
	"SCHILY.acl.default": "system.posix_acl_default",
}

// tarXattrs returns the extended attributes of the tar entry at p from its
// PAX records, POSIX ACLs in the binary form the kernel's getxattr(2)
// gives. GNU tar stores an ACL as SCHILY.xattr.system.posix_acl_* (that
// binary form, with --xattrs) and as SCHILY.acl.access/default (text, with
// --acls); when both are there they are the same ACL and the binary one is
// taken. A text-only ACL is converted when its entries give numeric ids:
// tar writes a user or group the machine making the tarball had a name for
// by that name, which need not be the root's name for the same id (uid
// 1000 may be "pi" in the root and someone else on the build host), so a
// named entry is refused rather than guessed.
func tarXattrs(p string, pax map[string]string) (map[string][]byte, error) {
	var x map[string][]byte
	set := func(name string, v []byte) {
		if x == nil {
			x = map[string][]byte{}
		}
		x[name] = v
	}
	var texts []string
	for k, v := range pax {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if strings.HasPrefix(name, "system.posix_acl_") {
				if _, err := posixacl.ParseXattr([]byte(v)); err != nil {
					return nil, fmt.Errorf("%s: %s: %w", p, k, err)
				}
			}
			set(name, []byte(v))
		} else if _, ok := aclXattrs[k]; ok {
			texts = append(texts, k)
		} else if strings.HasPrefix(k, "SCHILY.acl.") {
			return nil, fmt.Errorf("%s: ACL record %s is not a POSIX ACL (NFSv4 ACLs, from bsdtar or star, have no place on ext4): re-create the tarball without them", p, k)
		}
	}
	sort.Strings(texts)
	for _, k := range texts {
		name := aclXattrs[k]
		if _, ok := x[name]; ok {
			continue
		}
		acl, err := posixacl.ParseText(pax[k], nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %s, which tar stored only as text (%s): %w; tar writes the names the machine making the tarball had for ids, and the id meant cannot be known here: re-create the tarball with tar --xattrs --xattrs-include='*' (as mmdebstrap does), which stores ACLs with their numeric ids",
				p, name, k, err)
		}
		set(name, acl.Xattr())
	}
	return x, nil
}
