package base

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/blakesmith/ar"
)

// DebControl is what a Debian binary package says about itself (the
// fields of its control file that name it).
type DebControl struct {
	Package      string
	Version      string
	Architecture string // "arm64", or "all" for architecture-independent packages
}

// String is the name apt uses: package=version (architecture).
func (c DebControl) String() string {
	return fmt.Sprintf("%s %s (%s)", c.Package, c.Version, c.Architecture)
}

// openDeb reads a Debian binary package: an ar archive of debian-binary,
// control.tar[.gz|.xz|.zst] and data.tar[.gz|.xz|.zst]. The data tarball
// becomes the base's root tree, as dpkg would unpack it on /.
func openDeb(ctx context.Context, source string, o Options, c *cleaner) (*Base, error) {
	f, err := os.Open(source)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	a := ar.NewReader(bufio.NewReaderSize(f, 1<<20))
	var ctl *DebControl
	b := &Base{Kind: KindDeb}
	seen := map[string]bool{}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hdr, err := a.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("not a Debian package (read its ar archive): %w", err)
		}
		name := strings.TrimSuffix(strings.TrimSpace(hdr.Name), "/")
		seen[name] = true
		switch {
		case name == "debian-binary":
			v, err := io.ReadAll(io.LimitReader(a, 64))
			if err != nil {
				return nil, fmt.Errorf("debian-binary: %w", err)
			}
			if !strings.HasPrefix(string(v), "2.") {
				return nil, fmt.Errorf("Debian package format %q: only 2.x is known", strings.TrimSpace(string(v)))
			}
		case strings.HasPrefix(name, "control.tar"):
			if ctl, err = readDebControl(a, name); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		case strings.HasPrefix(name, "data.tar"):
			if ctl == nil {
				return nil, errors.New("data.tar comes before control.tar: not a package dpkg would install")
			}
			r, closeDec, err := decompressor(a, name)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			o.progressf("reading %s %s (%s)", ctl.Package, ctl.Version, name)
			root, n, err := importTar(ctx, r, o, c)
			closeDec()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			b.Root = root
			b.Description = fmt.Sprintf("Debian package %s %s (%s), %d entries, %s of files", ctl.Package, ctl.Version, ctl.Architecture, n, humanSize(root.ContentSize()))
		}
	}
	if !seen["debian-binary"] || ctl == nil || b.Root == nil {
		return nil, fmt.Errorf("not a Debian binary package: it lacks debian-binary, control.tar or data.tar (has %v)", keys(seen))
	}
	b.Deb, b.Arch = ctl, ctl.Architecture
	return b, nil
}

// readDebControl finds the control file in a control tarball and parses
// the fields that name the package.
func readDebControl(r io.Reader, name string) (*DebControl, error) {
	dr, closeDec, err := decompressor(r, name)
	if err != nil {
		return nil, err
	}
	defer closeDec()
	tr := tar.NewReader(dr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil, errors.New("no control file in it")
		}
		if err != nil {
			return nil, err
		}
		if strings.TrimPrefix(hdr.Name, "./") != "control" {
			continue
		}
		fields, err := parseControl(io.LimitReader(tr, 1<<20))
		if err != nil {
			return nil, err
		}
		c := &DebControl{Package: fields["Package"], Version: fields["Version"], Architecture: fields["Architecture"]}
		if c.Package == "" || c.Version == "" || c.Architecture == "" {
			return nil, fmt.Errorf("control file lacks Package, Version or Architecture (%q %q %q)", c.Package, c.Version, c.Architecture)
		}
		return c, nil
	}
}

// parseControl reads one deb822 stanza: "Field: value" lines, where a line
// starting with a space continues the field before it.
func parseControl(r io.Reader) (map[string]string, error) {
	fields := map[string]string{}
	last := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				fields[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("control line %q is not Field: value", line)
		}
		last = strings.TrimSpace(k)
		fields[last] = strings.TrimSpace(v)
	}
	return fields, sc.Err()
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// isDeb reports whether a source names a Debian package file.
func isDeb(source string) bool { return strings.EqualFold(filepath.Ext(source), ".deb") }
