package base

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/lekiwi/heartbeat/image/tree"
)

// FirmwareDir loads a folder of boot firmware (e.g. the contents of Debian
// raspi-firmware's /usr/lib/raspi-firmware) into a tree for a boot
// partition. Files keep their permission bits and modification times and
// are read when written; symlinks are followed because FAT has none.
// Ownership is root's: FAT has no owners either.
func FirmwareDir(dir string) (*tree.Tree, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("firmware folder: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("firmware folder %s is not a directory", dir)
	}
	t := tree.New()
	files := 0
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		info, err := os.Stat(p) // follows symlinks
		if err != nil {
			return fmt.Errorf("firmware %s: %w", rel, err)
		}
		rel = filepath.ToSlash(rel)
		switch {
		case info.IsDir():
			if d.Type()&fs.ModeSymlink != 0 {
				return fmt.Errorf("firmware %s: symlink to a directory; copy the files instead", rel)
			}
			return t.Add(tree.Entry{Path: rel, Kind: tree.Dir, Mode: info.Mode().Perm(), ModTime: info.ModTime().UTC()})
		case info.Mode().IsRegular():
			files++
			return t.AddHostFile(rel, p, info.Mode().Perm(), info.ModTime().UTC())
		}
		return fmt.Errorf("firmware %s: a %v cannot go on a FAT boot partition", rel, info.Mode().Type())
	})
	if err != nil {
		return nil, fmt.Errorf("firmware folder %s: %w", dir, err)
	}
	if files == 0 {
		return nil, errors.New("firmware folder " + dir + " holds no files: point --firmware at e.g. /usr/lib/raspi-firmware")
	}
	return t, nil
}
