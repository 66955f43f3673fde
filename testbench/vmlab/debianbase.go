package vmlab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// DebianBase describes a Debian arm64 root filesystem for the lab's robot
// image: what mmdebstrap installs, and the few files that make it boot
// as a robot does (systemd-networkd with DHCP on every wired link).
//
// The kernel is deliberately not among the packages: linux-image-arm64
// pulls initramfs-tools, and mkinitramfs under qemu-user took 35 of the
// 40 minutes such a bootstrap took here. The lab boots the kernel from the
// kernel package and the initramfs the project builds itself.
type DebianBase struct {
	Suite    string   // default bookworm
	Mirror   string   // default http://deb.debian.org/debian
	Packages []string // default DefaultBasePackages
}

// DefaultBasePackages make a root systemd boots with: udev for device
// units (fstab waits on them), D-Bus for the agent's view of services and
// its reboots through logind, iproute2 and kmod for a technician, and
// openssh-server because the robot profiles require ssh.service (the
// trial boot's health check waits for it, as on a real robot).
var DefaultBasePackages = []string{"systemd", "systemd-sysv", "udev", "dbus", "iproute2", "kmod", "openssh-server"}

// networkUnit makes every wired link ask for an address by DHCP.
const networkUnit = `[Match]
Name=en* eth*

[Network]
DHCP=ipv4
`

func (b DebianBase) withDefaults() DebianBase {
	if b.Suite == "" {
		b.Suite = "bookworm"
	}
	if b.Mirror == "" {
		b.Mirror = "http://deb.debian.org/debian"
	}
	if len(b.Packages) == 0 {
		b.Packages = DefaultBasePackages
	}
	return b
}

// args are mmdebstrap's arguments before the output path. Everything
// that changes the result is here, so their hash keys the cache.
func (b DebianBase) args() []string {
	pk := slices.Clone(b.Packages)
	slices.Sort(pk)
	args := []string{"--arch=arm64", "--variant=essential", "--format=tar", "--include=" + strings.Join(pk, ","),
		"--aptopt=Acquire::Retries \"3\""}
	for _, d := range []string{"doc", "man", "locale", "info"} {
		args = append(args, "--dpkgopt=path-exclude=/usr/share/"+d+"/*")
	}
	args = append(args,
		"--customize-hook=mkdir -p \"$1/etc/systemd/network\" && printf '%s' '"+networkUnit+"' > \"$1/etc/systemd/network/20-wired.network\"",
		"--customize-hook=chroot \"$1\" systemctl enable systemd-networkd systemd-networkd-wait-online",
		"--customize-hook=echo lekiwi-lab > \"$1/etc/hostname\"",
		// An empty machine-id: systemd makes one at first boot, so two
		// robots from one image are not one machine.
		"--customize-hook=: > \"$1/etc/machine-id\"",
	)
	return args
}

// Key is the cache key: the suite, mirror and arguments, and the
// mmdebstrap that runs them.
func (b DebianBase) Key() string {
	b = b.withDefaults()
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n", b.Suite, b.Mirror, mmdebstrapVersion())
	for _, a := range b.args() {
		fmt.Fprintf(h, "%s\n", a)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func mmdebstrapVersion() string {
	out, err := exec.Command("mmdebstrap", "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// Tarball returns the path of the base's root filesystem tarball in
// cacheDir, building it first when the cache has none for its inputs.
// Building needs root, mmdebstrap and qemu-user-static (arm64 maintainer
// scripts run under binfmt_misc, which it registers); it takes several
// minutes on two cores, and progress goes to log.
func (b DebianBase) Tarball(ctx context.Context, cacheDir string, log io.Writer) (string, error) {
	b = b.withDefaults()
	out := filepath.Join(cacheDir, "debian-base-"+b.Suite+"-arm64-"+b.Key()+".tar")
	if st, err := os.Stat(out); err == nil && st.Mode().IsRegular() {
		return out, nil
	}
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		return "", errors.New("building the lab's Debian base needs mmdebstrap (apt-get install mmdebstrap qemu-user-static; `make deps-test` does)")
	}
	if err := RegisterArm64Binfmt(); err != nil {
		return "", err
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("debian base cache: %w", err)
	}
	// mmdebstrap picks the format from the name's extension unless told
	// (--format=tar above): a ".partial" name would make a directory.
	partial := out + ".partial"
	os.RemoveAll(partial)
	args := append(b.args(), b.Suite, partial, "deb "+b.Mirror+" "+b.Suite+" main")
	cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
	cmd.Stdout, cmd.Stderr = log, log
	start := time.Now()
	fmt.Fprintf(log, "vmlab: building the Debian %s arm64 base (cached as %s; takes minutes)\n", b.Suite, out)
	if err := cmd.Run(); err != nil {
		os.RemoveAll(partial)
		return "", fmt.Errorf("mmdebstrap of the lab's Debian base: %w", err)
	}
	if err := os.Rename(partial, out); err != nil {
		return "", fmt.Errorf("debian base cache: %w", err)
	}
	fmt.Fprintf(log, "vmlab: Debian base built in %s\n", time.Since(start).Round(time.Second))
	return out, nil
}

// RegisterArm64Binfmt makes arm64 programs run on this machine through
// qemu-user-static: binfmt_misc mounted and its qemu-aarch64 entry
// registered from /usr/lib/binfmt.d, unless already there.
func RegisterArm64Binfmt() error {
	const dir = "/proc/sys/fs/binfmt_misc"
	if _, err := os.Stat(filepath.Join(dir, "qemu-aarch64")); err == nil {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, "register")); err != nil {
		if out, err := exec.Command("mount", "-t", "binfmt_misc", "binfmt_misc", dir).CombinedOutput(); err != nil {
			return fmt.Errorf("mounting binfmt_misc (needs root): %v: %s", err, out)
		}
	}
	entry, err := os.ReadFile("/usr/lib/binfmt.d/qemu-aarch64.conf")
	if err != nil {
		return fmt.Errorf("qemu-aarch64 binfmt entry: %w (apt-get install qemu-user-static)", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "register"), entry, 0); err != nil {
		return fmt.Errorf("registering qemu-aarch64 with binfmt_misc: %w", err)
	}
	return nil
}
