package ext4

import (
	"fmt"
	"path"
)

// maxDepth bounds directory nesting; real trees are far shallower, and a
// bound keeps a crafted image from exhausting the stack.
const maxDepth = 512

// Walk calls fn for the root directory (as ".") and then for every name
// reachable from it, depth first with each directory's names in byte
// order, which is the path order image/tree uses. A name seen again with
// the same inode is a hard link; fn sees it like any other name and can
// compare Inode.Num. Directory cycles are reported as corruption.
func (fs *FS) Walk(fn func(p string, in *Inode) error) error {
	root, err := fs.Inode(RootInode)
	if err != nil {
		return err
	}
	if root.Type() != TypeDir {
		return corrupt("root inode is not a directory (mode %#o)", root.Mode)
	}
	if err := fn(".", root); err != nil {
		return err
	}
	seen := map[uint32]bool{RootInode: true}
	return fs.walkDir("", root, 0, seen, fn)
}

func (fs *FS) walkDir(dir string, in *Inode, depth int, seen map[uint32]bool, fn func(string, *Inode) error) error {
	if depth > maxDepth {
		return corrupt("directories nested deeper than %d at %s", maxDepth, dir)
	}
	entries, err := fs.ReadDir(in)
	if err != nil {
		return fmt.Errorf("%s: %w", displayDir(dir), err)
	}
	for _, de := range entries {
		if de.Name == "" || de.Name == "." || de.Name == ".." || containsSlashOrNUL(de.Name) {
			return corrupt("%s: invalid name %q", displayDir(dir), de.Name)
		}
		p := path.Join(dir, de.Name)
		child, err := fs.Inode(de.Inode)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if err := fn(p, child); err != nil {
			return err
		}
		if child.Type() == TypeDir {
			if seen[child.Num] {
				return corrupt("%s: directory inode %d appears twice (a cycle)", p, child.Num)
			}
			seen[child.Num] = true
			if err := fs.walkDir(p, child, depth+1, seen, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

func displayDir(d string) string {
	if d == "" {
		return "/"
	}
	return d
}

func containsSlashOrNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' || s[i] == 0 {
			return true
		}
	}
	return false
}
