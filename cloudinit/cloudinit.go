// Package cloudinit renders the cloud-init NoCloud seed — the files
// user-data, meta-data and network-config — that first-boot configures a
// robot, following Raspberry Pi OS's own cloud-init convention.
//
// The convention (Raspberry Pi OS Trixie images, 2025-10 onwards, built by
// RPi-Distro/pi-gen stage2/04-cloud-init): the three files sit at the root
// of the boot FAT partition, mounted at /boot/firmware, and
// /etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg selects the NoCloud datasource
// with "seedfrom: file:///boot/firmware". meta-data carries the instance id
// and "dsmode: local" (user-data is applied before the network is up);
// network-config is netplan-style network configuration version 2 under a
// top-level "network:" key (cloud-init strips that key), eth0 on DHCP and
// optional by default. Our images put the same datasource selection on the
// kernel command line as well (CmdlineArg), so a root filesystem whose
// cloud.cfg.d lacks Raspberry Pi's file still finds the seed.
//
// The output is byte-for-byte deterministic: mappings are rendered with
// sorted keys, lists in the order given, and nothing depends on the clock.
//
// Secrets never go in the seed. The boot partition is FAT, world-readable
// once mounted and readable by anyone holding the card; cloud-init also
// copies user-data into /var/lib/cloud/instance and its logs. Enrollment
// tokens, private keys and certificates belong on the persistent partition
// (see the image package's customisation), where only root can read them.
// Validate refuses private keys it can recognise. Wi-Fi passwords are the
// one exception the format forces (netplan takes them in network-config,
// as Raspberry Pi Imager writes them); prefer wired networks for fleets.
package cloudinit

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/lekiwi/heartbeat/profiles"
)

// SeedDir is where Raspberry Pi OS mounts the boot partition, and so where
// cloud-init reads the seed from.
const SeedDir = "/boot/firmware/"

// CmdlineArg is the kernel command line argument that selects the NoCloud
// datasource and points it at the boot partition: "ds=nocloud" with
// "s=" (seedfrom) a file:// URL. The trailing slash matters: cloud-init
// appends "meta-data", "user-data" and "network-config" to it.
const CmdlineArg = "ds=nocloud;s=file://" + SeedDir

// Seed file names, at the root of the boot partition.
const (
	UserDataFile      = "user-data"
	MetaDataFile      = "meta-data"
	NetworkConfigFile = "network-config"
)

// Seed is the first-boot configuration of one robot.
type Seed struct {
	// InstanceID identifies this installation to cloud-init, which runs
	// its once-per-instance steps again when the id changes (required).
	InstanceID string
	// Hostname is the robot's host name, a single RFC 1123 label (required).
	Hostname string
	// Users are created on first boot. Listing users replaces the
	// distribution's default user (no "pi" account is created).
	Users []User
	// Packages are Debian packages installed on first boot (needs network).
	Packages []string
	// RunCmd are commands run once, late in first boot, each an argv list
	// (no shell), in order.
	RunCmd [][]string
	// WriteFiles are files written early in first boot.
	WriteFiles []File
	// Network is the network configuration; nil leaves networking to the
	// operating system's defaults ("config: disabled").
	Network *Network
	// Timezone such as "Etc/UTC"; empty keeps the image's.
	Timezone string
	// SSHPasswordAuth allows SSH password logins; false (the default)
	// allows keys only.
	SSHPasswordAuth bool
}

// User is a local account.
type User struct {
	Name   string
	Groups []string
	// Sudo grants password-less sudo ("ALL=(ALL) NOPASSWD:ALL").
	Sudo bool
	// SSHAuthorizedKeys are OpenSSH public keys.
	SSHAuthorizedKeys []string
	// LockPassword disables password login for the account.
	LockPassword bool
}

// File is a file cloud-init writes.
type File struct {
	Path    string // absolute
	Content string // any bytes; non-UTF-8 content is written base64-encoded
	// Permissions are the file's mode bits (fs.ModePerm plus setuid,
	// setgid, sticky); zero means cloud-init's default, 0644.
	Permissions fs.FileMode
	// Owner is "user:group"; empty means root:root.
	Owner string
}

// Network is cloud-init network configuration version 2 (netplan's form).
type Network struct {
	// Ethernets by interface name, such as "eth0".
	Ethernets map[string]Ethernet
	// WiFis by interface name, such as "wlan0".
	WiFis map[string]WiFi
}

// Ethernet is one wired interface.
type Ethernet struct {
	DHCP4 bool
	// Optional lets boot continue without this link (netplan "optional").
	Optional bool
}

// WiFi is one wireless interface.
type WiFi struct {
	DHCP4    bool
	Optional bool
	// AccessPoints by SSID.
	AccessPoints map[string]AccessPoint
	// RegulatoryDomain is the two-letter country code, such as "GB".
	RegulatoryDomain string
}

// AccessPoint is one network to join. Its password is written in clear to
// the world-readable boot partition (see the package comment).
type AccessPoint struct {
	Password string // empty for an open network
}

var (
	instanceID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	hostLabel  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	unixName   = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	debPackage = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	ifaceName  = regexp.MustCompile(`^[A-Za-z0-9._-]{1,15}$`)
	timezone   = regexp.MustCompile(`^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$`)
	regDomain  = regexp.MustCompile(`^[A-Z]{2}$`)
	hexPSK     = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
	owner      = regexp.MustCompile(`^[a-z_][a-z0-9_-]*(:[a-z_][a-z0-9_-]*)?$`)
	// Private key material announces itself; nothing with these markers
	// may reach a world-readable partition.
	secretMarkers = []string{"PRIVATE KEY-----", "BEGIN OPENSSH PRIVATE", "BEGIN PGP PRIVATE"}
)

// Validate checks the seed and returns every problem found, joined.
func (s Seed) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if !instanceID.MatchString(s.InstanceID) {
		bad("instance id %q: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", s.InstanceID)
	}
	if !hostLabel.MatchString(s.Hostname) {
		bad("hostname %q: use a single label of lowercase letters, digits and inner hyphens, at most 63 characters", s.Hostname)
	}
	users := map[string]bool{}
	for i, u := range s.Users {
		if !unixName.MatchString(u.Name) {
			bad("users[%d]: %q is not a valid user name", i, u.Name)
		} else if users[u.Name] {
			bad("users[%d]: user %q is listed twice", i, u.Name)
		}
		users[u.Name] = true
		for _, g := range u.Groups {
			if !unixName.MatchString(g) {
				bad("users[%d] (%s): %q is not a valid group name", i, u.Name, g)
			}
		}
		for _, k := range u.SSHAuthorizedKeys {
			if strings.ContainsAny(k, "\r\n") || len(strings.Fields(k)) < 2 || hasSecret(k) {
				bad("users[%d] (%s): SSH key %q is not a one-line OpenSSH public key", i, u.Name, abbreviate(k))
			}
		}
	}
	for i, p := range s.Packages {
		if !debPackage.MatchString(p) {
			bad("packages[%d]: %q is not a Debian package name", i, p)
		}
	}
	for i, argv := range s.RunCmd {
		if len(argv) == 0 || argv[0] == "" {
			bad("runcmd[%d]: empty command", i)
		}
		for _, a := range argv {
			if strings.ContainsRune(a, 0) {
				bad("runcmd[%d]: argument contains a NUL byte", i)
			}
			if hasSecret(a) {
				bad("runcmd[%d]: argument holds private key material: secrets go to the persistent partition, never the world-readable seed", i)
			}
		}
	}
	paths := map[string]bool{}
	for i, f := range s.WriteFiles {
		if !strings.HasPrefix(f.Path, "/") || f.Path == "/" || path.Clean(f.Path) != f.Path {
			bad("write_files[%d]: path %q must be absolute and clean", i, f.Path)
		} else if paths[f.Path] {
			bad("write_files[%d]: path %q is written twice", i, f.Path)
		}
		paths[f.Path] = true
		if f.Permissions&^(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			bad("write_files[%d] (%s): permissions %v hold more than mode bits", i, f.Path, f.Permissions)
		}
		if f.Owner != "" && !owner.MatchString(f.Owner) {
			bad("write_files[%d] (%s): owner %q is not \"user\" or \"user:group\"", i, f.Path, f.Owner)
		}
		if hasSecret(f.Content) {
			bad("write_files[%d] (%s): content holds private key material: secrets go to the persistent partition, never the world-readable seed", i, f.Path)
		}
	}
	if s.Timezone != "" && !timezone.MatchString(s.Timezone) {
		bad("timezone %q: use a tz database name such as \"Etc/UTC\" or \"Europe/London\"", s.Timezone)
	}
	if n := s.Network; n != nil {
		if len(n.Ethernets)+len(n.WiFis) == 0 {
			bad("network: no interfaces; use a nil Network to leave networking to the OS")
		}
		for name := range n.Ethernets {
			if !ifaceName.MatchString(name) {
				bad("network: ethernet interface name %q is not valid (at most 15 letters, digits, '.', '_', '-')", name)
			}
		}
		for name, w := range n.WiFis {
			if !ifaceName.MatchString(name) {
				bad("network: wifi interface name %q is not valid (at most 15 letters, digits, '.', '_', '-')", name)
			}
			if _, dup := n.Ethernets[name]; dup {
				bad("network: interface %q is both ethernet and wifi", name)
			}
			if len(w.AccessPoints) == 0 {
				bad("network: wifi %q has no access points", name)
			}
			for ssid, ap := range w.AccessPoints {
				if ssid == "" || len(ssid) > 32 {
					bad("network: wifi %q: SSID %q must be 1-32 bytes", name, ssid)
				}
				if ap.Password != "" && (len(ap.Password) < 8 || len(ap.Password) > 64 || (len(ap.Password) == 64 && !hexPSK.MatchString(ap.Password))) {
					bad("network: wifi %q: the password for %q must be 8-63 characters (or a 64-digit hex PSK)", name, ssid)
				}
			}
			if w.RegulatoryDomain != "" && !regDomain.MatchString(w.RegulatoryDomain) {
				bad("network: wifi %q: regulatory domain %q must be a two-letter country code such as \"GB\"", name, w.RegulatoryDomain)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid cloud-init seed: %w", errors.Join(errs...))
	}
	return nil
}

func hasSecret(s string) bool {
	for _, m := range secretMarkers {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

func abbreviate(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

// Files renders the seed: the contents of "user-data" (starting with
// "#cloud-config\n"), "meta-data" and "network-config", keyed by file name.
// The same seed always renders to the same bytes.
func (s Seed) Files() (map[string][]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	user, err := render("#cloud-config\n", s.userData())
	if err != nil {
		return nil, fmt.Errorf("render user-data: %w", err)
	}
	meta, err := render("", map[string]any{
		// local: apply user-data before the network is up, as Raspberry
		// Pi OS's own meta-data does.
		"dsmode":         "local",
		"instance-id":    s.InstanceID,
		"local-hostname": s.Hostname,
	})
	if err != nil {
		return nil, fmt.Errorf("render meta-data: %w", err)
	}
	network, err := render("", map[string]any{"network": s.networkConfig()})
	if err != nil {
		return nil, fmt.Errorf("render network-config: %w", err)
	}
	return map[string][]byte{UserDataFile: user, MetaDataFile: meta, NetworkConfigFile: network}, nil
}

// render marshals v (maps render with sorted keys) after a header line.
func render(header string, v any) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(header)
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (s Seed) userData() map[string]any {
	ud := map[string]any{
		"hostname": s.Hostname,
		// Keep /etc/hosts' 127.0.1.1 line in step with the host name, so
		// that sudo and avahi resolve it.
		"manage_etc_hosts":  true,
		"preserve_hostname": false,
		"ssh_pwauth":        s.SSHPasswordAuth,
	}
	if len(s.Users) > 0 {
		var users []any
		for _, u := range s.Users {
			m := map[string]any{
				"name":        u.Name,
				"lock_passwd": u.LockPassword,
				"shell":       "/bin/bash",
			}
			if len(u.Groups) > 0 {
				m["groups"] = strings.Join(u.Groups, ", ")
			}
			if u.Sudo {
				m["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
			}
			if len(u.SSHAuthorizedKeys) > 0 {
				m["ssh_authorized_keys"] = u.SSHAuthorizedKeys
			}
			users = append(users, m)
		}
		ud["users"] = users
	}
	if len(s.Packages) > 0 {
		ud["packages"] = s.Packages
	}
	if len(s.RunCmd) > 0 {
		// One command per line: "- [systemctl, enable, --now, ssh.service]".
		cmds := &yaml.Node{Kind: yaml.SequenceNode}
		for _, argv := range s.RunCmd {
			cmd := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
			for _, a := range argv {
				cmd.Content = append(cmd.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: a})
			}
			cmds.Content = append(cmds.Content, cmd)
		}
		ud["runcmd"] = cmds
	}
	if len(s.WriteFiles) > 0 {
		var files []any
		for _, f := range s.WriteFiles {
			m := map[string]any{"path": f.Path, "owner": "root:root"}
			if f.Owner != "" {
				m["owner"] = f.Owner
			}
			if utf8.ValidString(f.Content) && !strings.ContainsRune(f.Content, 0) {
				m["content"] = f.Content
			} else {
				m["encoding"] = "b64"
				m["content"] = base64.StdEncoding.EncodeToString([]byte(f.Content))
			}
			if f.Permissions != 0 {
				m["permissions"] = octal(f.Permissions)
			}
			files = append(files, m)
		}
		ud["write_files"] = files
	}
	if s.Timezone != "" {
		ud["timezone"] = s.Timezone
	}
	return ud
}

// octal renders a mode as cloud-init wants it: a quoted octal string.
func octal(m fs.FileMode) string {
	bits := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		bits |= 0o1000
	}
	return fmt.Sprintf("%04o", bits)
}

func (s Seed) networkConfig() map[string]any {
	n := s.Network
	if n == nil {
		return map[string]any{"config": "disabled"}
	}
	nc := map[string]any{"version": 2}
	if len(n.Ethernets) > 0 {
		eth := map[string]any{}
		for name, e := range n.Ethernets {
			eth[name] = map[string]any{"dhcp4": e.DHCP4, "optional": e.Optional}
		}
		nc["ethernets"] = eth
	}
	if len(n.WiFis) > 0 {
		wifis := map[string]any{}
		for name, w := range n.WiFis {
			aps := map[string]any{}
			for ssid, ap := range w.AccessPoints {
				m := map[string]any{}
				if ap.Password != "" {
					m["password"] = ap.Password
				}
				aps[ssid] = m
			}
			m := map[string]any{"dhcp4": w.DHCP4, "optional": w.Optional, "access-points": aps}
			if w.RegulatoryDomain != "" {
				m["regulatory-domain"] = w.RegulatoryDomain
			}
			wifis[name] = m
		}
		nc["wifis"] = wifis
	}
	return nc
}

// Identity is what distinguishes one robot's seed from another's.
type Identity struct {
	// RobotID becomes the instance id (required).
	RobotID string
	// Hostname overrides the profile's hostname pattern when set.
	Hostname string
	// Serial is the board serial number, needed when Hostname is empty and
	// the profile's pattern contains {serial}.
	Serial string
}

// DefaultTimezone is the time zone FromProfile sets: fleet logs and
// timestamps read the same on every robot, whatever the base image chose
// (Raspberry Pi OS defaults to Europe/London).
const DefaultTimezone = "Etc/UTC"

// FromProfile builds the seed for one robot of profile p: instance id from
// the robot id, host name from id.Hostname or the profile's pattern,
// the profile's users, packages and files, its services enabled and
// disabled through runcmd (systemctl --now, so first boot already runs as
// later boots will), eth0 on DHCP (optional, as Raspberry Pi OS's default).
// It takes no secrets and puts none in the seed.
func FromProfile(p *profiles.Profile, id Identity) (Seed, error) {
	if p == nil {
		return Seed{}, errors.New("cloud-init seed: no profile given")
	}
	if id.RobotID == "" {
		return Seed{}, fmt.Errorf("cloud-init seed for profile %s: the robot id is empty; it becomes the instance id", p.Name)
	}
	hostname := id.Hostname
	if hostname == "" {
		h, err := p.Hostname(id.Serial, id.RobotID)
		if err != nil {
			return Seed{}, fmt.Errorf("cloud-init seed for robot %s: host name from profile %s: %w (give the host name or the board serial)", id.RobotID, p.Name, err)
		}
		hostname = h
	}
	s := Seed{
		InstanceID: id.RobotID,
		Hostname:   hostname,
		Packages:   append([]string(nil), p.Packages...),
		Timezone:   DefaultTimezone,
		Network: &Network{Ethernets: map[string]Ethernet{
			"eth0": {DHCP4: true, Optional: true},
		}},
	}
	for _, u := range p.Users {
		s.Users = append(s.Users, User{
			Name:              u.Name,
			Groups:            append([]string(nil), u.Groups...),
			Sudo:              u.Sudo,
			SSHAuthorizedKeys: append([]string(nil), u.SSHAuthorizedKeys...),
			LockPassword:      u.LockPassword,
		})
	}
	for _, unit := range p.Services.Disable {
		s.RunCmd = append(s.RunCmd, []string{"systemctl", "disable", "--now", unit})
	}
	for _, unit := range p.Services.Enable {
		s.RunCmd = append(s.RunCmd, []string{"systemctl", "enable", "--now", unit})
	}
	for _, f := range p.Files {
		s.WriteFiles = append(s.WriteFiles, File{Path: f.Path, Content: f.Content, Permissions: f.Mode, Owner: "root:root"})
	}
	if err := s.Validate(); err != nil {
		return Seed{}, fmt.Errorf("cloud-init seed for robot %s (profile %s): %w", id.RobotID, p.Name, err)
	}
	return s, nil
}
