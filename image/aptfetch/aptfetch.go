// Package aptfetch downloads Debian packages (.deb files) with apt-get
// under a private directory: its own configuration, sources.list, package
// lists, dpkg status and download cache, so the host's apt configuration
// (/etc/apt, its hooks and proxies, its architecture, what it has
// installed) is never read nor touched and no root is needed. A package is
// kept as <name>_<version>_<arch>.deb in Dir/debs and downloaded again only
// when the archive's candidate version changes.
//
// apt-get reads its configuration from APT_CONFIG, pointing at Dir's
// apt.conf, which also names Dir's own (empty) apt.conf.d: command-line -o
// options come too late to keep the host's apt.conf.d out.
package aptfetch

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Keyring is the Debian archive keyring the private sources trust.
const Keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// Fetcher downloads packages of one Debian release and architecture. The
// zero value with Dir set fetches bookworm arm64 from deb.debian.org.
type Fetcher struct {
	Dir        string   // private state, cache and downloads (created)
	Arch       string   // Debian architecture, default "arm64"
	Suite      string   // default "bookworm" (also fetches <suite>-updates and <suite>-security)
	Mirror     string   // default "http://deb.debian.org/debian"
	Security   string   // default "http://deb.debian.org/debian-security"
	Components []string // default main and non-free-firmware (raspi-firmware lives there)
	// MaxListAge reuses package lists younger than this; 0 updates them
	// on every call that needs them.
	MaxListAge time.Duration
	// Progress, if set, receives one line per slow step.
	Progress io.Writer

	updated bool
}

// DefaultDir is where fetched packages are kept when the caller names no
// directory: /var/cache/lekiwi/<purpose> for root, else
// $XDG_CACHE_HOME/lekiwi/<purpose> (~/.cache/lekiwi/<purpose>).
func DefaultDir(purpose string) (string, error) {
	if os.Geteuid() == 0 {
		return filepath.Join("/var/cache/lekiwi", purpose), nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (set XDG_CACHE_HOME or HOME): %w", err)
	}
	return filepath.Join(d, "lekiwi", purpose), nil
}

func (f *Fetcher) arch() string   { return or(f.Arch, "arm64") }
func (f *Fetcher) suite() string  { return or(f.Suite, "bookworm") }
func (f *Fetcher) mirror() string { return or(f.Mirror, "http://deb.debian.org/debian") }
func (f *Fetcher) securityMirror() string {
	return or(f.Security, "http://deb.debian.org/debian-security")
}
func (f *Fetcher) components() string {
	if len(f.Components) == 0 {
		return "main non-free-firmware"
	}
	return strings.Join(f.Components, " ")
}

func or(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (f *Fetcher) progressf(format string, a ...any) {
	if f.Progress != nil {
		fmt.Fprintf(f.Progress, format+"\n", a...)
	}
}

func (f *Fetcher) aptDir(parts ...string) string {
	return filepath.Join(append([]string{f.Dir, "apt"}, parts...)...)
}

// setup writes the private apt configuration. It is rewritten on every
// call so a changed mirror or suite takes effect.
func (f *Fetcher) setup() error {
	if f.Dir == "" {
		return errors.New("aptfetch: no directory given")
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return errors.New("apt-get not found: fetching needs Debian's apt; download the packages elsewhere and give the .deb files instead")
	}
	if _, err := os.Stat(Keyring); err != nil {
		return fmt.Errorf("the Debian archive keyring %s is missing (install the debian-archive-keyring package): %w", Keyring, err)
	}
	for _, d := range []string{"etc/apt.conf.d", "etc/sources.list.d", "etc/preferences.d", "etc/trusted.gpg.d", "state/lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(f.aptDir(d), 0o755); err != nil {
			return fmt.Errorf("aptfetch: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(f.Dir, "debs"), 0o755); err != nil {
		return fmt.Errorf("aptfetch: %w", err)
	}
	if err := writeIfChanged(f.aptDir("state", "status"), ""); err != nil {
		return err
	}
	var sources strings.Builder
	opts := fmt.Sprintf("[arch=%s signed-by=%s]", f.arch(), Keyring)
	fmt.Fprintf(&sources, "deb %s %s %s %s\n", opts, f.mirror(), f.suite(), f.components())
	fmt.Fprintf(&sources, "deb %s %s %s-updates %s\n", opts, f.mirror(), f.suite(), f.components())
	fmt.Fprintf(&sources, "deb %s %s %s-security %s\n", opts, f.securityMirror(), f.suite(), f.components())
	if err := writeIfChanged(f.aptDir("etc", "sources.list"), sources.String()); err != nil {
		return err
	}
	conf := fmt.Sprintf(`// Written by aptfetch: a private apt that never reads the host's configuration.
Dir::Etc "%[1]s/etc";
Dir::Etc::Main "%[1]s/etc/apt.conf";
Dir::Etc::Parts "%[1]s/etc/apt.conf.d";
Dir::Etc::SourceList "%[1]s/etc/sources.list";
Dir::Etc::SourceParts "%[1]s/etc/sources.list.d";
Dir::Etc::Preferences "%[1]s/etc/preferences";
Dir::Etc::PreferencesParts "%[1]s/etc/preferences.d";
Dir::Etc::Trusted "%[1]s/etc/trusted.gpg";
Dir::Etc::TrustedParts "%[1]s/etc/trusted.gpg.d";
Dir::State "%[1]s/state";
Dir::State::status "%[1]s/state/status";
Dir::Cache "%[1]s/cache";
APT::Architecture "%[2]s";
APT::Architectures { "%[2]s"; };
// As root apt drops to the _apt user to download, who cannot write here.
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Acquire::Retries "3";
`, f.aptDir(), f.arch())
	return writeIfChanged(f.aptDir("apt.conf"), conf)
}

// writeIfChanged leaves a file with the right content alone: apt rebuilds
// its 36 MB package cache whenever sources.list or the status file is
// newer than it.
func writeIfChanged(p, content string) error {
	if old, err := os.ReadFile(p); err == nil && string(old) == content {
		return nil
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		return fmt.Errorf("aptfetch: %w", err)
	}
	return nil
}

// apt runs an apt command with the private configuration in dir (the
// directory apt-get download writes into) and returns its standard output.
func (f *Fetcher) apt(ctx context.Context, dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "APT_CONFIG="+f.aptDir("apt.conf"), "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// lock serialises fetchers sharing Dir (two test binaries, two builds):
// apt itself refuses a second user of its lists instead of waiting.
func (f *Fetcher) lock() (func(), error) {
	if err := os.MkdirAll(f.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("aptfetch: %w", err)
	}
	l, err := os.OpenFile(filepath.Join(f.Dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("aptfetch: %w", err)
	}
	if err := unix.Flock(int(l.Fd()), unix.LOCK_EX); err != nil {
		l.Close()
		return nil, fmt.Errorf("aptfetch: lock %s: %w", l.Name(), err)
	}
	return func() { l.Close() }, nil
}

// update refreshes the package lists unless they are younger than
// MaxListAge or were refreshed by this Fetcher already.
func (f *Fetcher) update(ctx context.Context) error {
	if f.updated {
		return nil
	}
	if f.MaxListAge > 0 && f.listsFresh() {
		f.updated = true
		return nil
	}
	f.progressf("updating package lists for %s %s from %s", f.suite(), f.arch(), f.mirror())
	start := time.Now()
	if _, err := f.apt(ctx, f.Dir, "apt-get", "update", "-q"); err != nil {
		return fmt.Errorf("aptfetch: cannot read the Debian archive (network to %s?): %w", f.mirror(), err)
	}
	f.progressf("package lists updated in %s", time.Since(start).Round(100*time.Millisecond))
	f.updated = true
	return nil
}

func (f *Fetcher) listsFresh() bool {
	rel, err := filepath.Glob(f.aptDir("state", "lists", "*InRelease"))
	if err != nil || len(rel) < 3 { // the suite, -updates and -security
		return false
	}
	for _, p := range rel {
		st, err := os.Stat(p)
		if err != nil || time.Since(st.ModTime()) > f.MaxListAge {
			return false
		}
	}
	return true
}

// Depends lists the packages name's candidate version depends on (first
// alternative of each), e.g. the versioned kernel package behind the
// linux-image-arm64 metapackage.
func (f *Fetcher) Depends(ctx context.Context, name string) ([]string, error) {
	unlock, err := f.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := f.setup(); err != nil {
		return nil, err
	}
	if err := f.update(ctx); err != nil {
		return nil, err
	}
	out, err := f.apt(ctx, f.Dir, "apt-cache", "depends", "--important", "--no-pre-depends", name)
	if err != nil {
		return nil, fmt.Errorf("aptfetch: no package %s in %s %s: %w", name, f.suite(), f.arch(), err)
	}
	var deps []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		// "  Depends: x" is a dependency, " |Depends: x" the first of
		// alternatives; "    y" lines are further alternatives.
		if d, ok := strings.CutPrefix(strings.TrimLeft(line, " |"), "Depends: "); ok && !strings.HasPrefix(line, "    ") {
			deps = append(deps, strings.Trim(d, "<>"))
		}
	}
	return deps, nil
}

// Download returns the path of name's candidate version in Dir/debs,
// downloading it when it is not there yet (or its checksum is not the
// archive's).
func (f *Fetcher) Download(ctx context.Context, name string) (string, error) {
	unlock, err := f.lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	if err := f.setup(); err != nil {
		return "", err
	}
	if err := f.update(ctx); err != nil {
		return "", err
	}
	out, err := f.apt(ctx, f.Dir, "apt-get", "download", "--print-uris", "-q", name)
	if err != nil {
		return "", fmt.Errorf("aptfetch: no package %s in %s %s: %w", name, f.suite(), f.arch(), err)
	}
	// 'URL' FILE SIZE SHA256:HEX
	fields := strings.Fields(string(out))
	if len(fields) != 4 || !strings.HasPrefix(fields[3], "SHA256:") {
		return "", fmt.Errorf("aptfetch: apt-get download --print-uris %s said %q: want one 'URL' FILE SIZE SHA256:... line", name, out)
	}
	file, err := url.PathUnescape(fields[1])
	if err != nil || file != filepath.Base(file) || !strings.HasSuffix(file, ".deb") {
		return "", fmt.Errorf("aptfetch: apt names the file of %s %q: not a .deb file name", name, fields[1])
	}
	want := strings.ToLower(strings.TrimPrefix(fields[3], "SHA256:"))
	dest := filepath.Join(f.Dir, "debs", file)
	if got, err := fileSHA256(dest); err == nil && got == want {
		return dest, nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("aptfetch: %w", err)
	}
	tmp, err := os.MkdirTemp(f.Dir, "download-")
	if err != nil {
		return "", fmt.Errorf("aptfetch: %w", err)
	}
	defer os.RemoveAll(tmp)
	f.progressf("downloading %s (%s)", file, fields[2]+" bytes")
	start := time.Now()
	if _, err := f.apt(ctx, tmp, "apt-get", "download", "-q", name); err != nil {
		return "", fmt.Errorf("aptfetch: download %s: %w", name, err)
	}
	got, err := fileSHA256(filepath.Join(tmp, fields[1]))
	if err != nil {
		return "", fmt.Errorf("aptfetch: apt-get download %s wrote no %s: %w", name, fields[1], err)
	}
	if got != want {
		return "", fmt.Errorf("aptfetch: %s has sha256 %s, the archive says %s", file, got, want)
	}
	if err := os.Rename(filepath.Join(tmp, fields[1]), dest); err != nil {
		return "", fmt.Errorf("aptfetch: %w", err)
	}
	f.progressf("downloaded %s in %s", file, time.Since(start).Round(100*time.Millisecond))
	return dest, nil
}

func fileSHA256(p string) (string, error) {
	fh, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
