package ota

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/lekiwi/heartbeat/agent/bootctl/rpi"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/ociart"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
)

// PiOptions are what the daemon knows; see config.Update.
type PiOptions struct {
	KeysDir, StateDir, CacheDir string
	Disk                        string // "" finds the disk holding the root filesystem
	ImageInfo                   string // image.json: version, profile and build time (the security floor)
	HealthCommand               string // "" uses the profile's
	AgentVersion                string
	Roots                       rpi.Roots
	// Reboot restarts the Pi (required): the agent service asks systemd
	// (reboot.Systemd), whose unit forbids reboot(2).
	Reboot reboot.Rebooter
	// Transport reaches control's registry with the robot's mTLS identity
	// (control accepts robot certificates for pulls); nil: the default.
	Transport http.RoundTripper
	// Connected reports whether the runtime's session with control is up
	// (see RobotHealthOptions.Connected).
	Connected func() bool
	// Report receives every update state: the update command handler's
	// Report (updatecmd.Handler.Report).
	Report func(protocol.UpdateState)
}

// OpenPi opens the parts of the Raspberry Pi the agent runs on (the boot
// config partition, the whole boot disk found through sysfs unless
// o.Disk names it) and builds the updater on them with the image's profile
// and the robot's health check (RobotHealth); close releases them.
func OpenPi(o PiOptions) (u *Updater, closeFn func() error, err error) {
	info, err := layout.ReadImageInfo(o.ImageInfo)
	if err != nil {
		return nil, nil, fmt.Errorf("updates: %w", err)
	}
	prof, err := profiles.Load(info.Profile)
	if err != nil {
		return nil, nil, fmt.Errorf("updates: %w", err)
	}
	keys, err := release.ReadPublicKeys(o.KeysDir)
	if err != nil {
		return nil, nil, fmt.Errorf("updates: %w", err)
	}
	bcPath, err := rpi.FindBootConfig(o.Roots)
	if err != nil {
		return nil, nil, fmt.Errorf("updates: %w", err)
	}
	bc, err := rpi.OpenDevice(bcPath)
	if err != nil {
		return nil, nil, fmt.Errorf("updates: %w", err)
	}
	ctl, err := rpi.New(rpi.Options{DeviceTree: filepath.Join(orDefault(o.Roots.Proc, "/proc"), "device-tree"), BootConfig: bc, Reboot: o.Reboot})
	if err != nil {
		bc.Close()
		return nil, nil, err
	}
	diskPath := o.Disk
	if diskPath == "" {
		if diskPath, err = diskOf(bcPath, o.Roots); err != nil {
			bc.Close()
			return nil, nil, err
		}
	}
	disk, err := os.OpenFile(diskPath, os.O_RDWR, 0)
	if err != nil {
		bc.Close()
		return nil, nil, fmt.Errorf("updates: open the boot disk: %w", err)
	}
	size, err := disk.Seek(0, io.SeekEnd)
	if err != nil {
		bc.Close()
		disk.Close()
		return nil, nil, fmt.Errorf("updates: size of %s: %w", diskPath, err)
	}
	command := o.HealthCommand
	if command == "" {
		command = prof.Health.Command
	}
	u, err = New(Options{Boot: ctl, Disk: disk, DiskSize: size, TrustedKeys: keys,
		Source:   RegistrySource{Options: ociart.Options{Auth: authn.Anonymous, Transport: o.Transport}},
		StateDir: o.StateDir, CacheDir: o.CacheDir, Profile: info.Profile, AgentVersion: o.AgentVersion, CurrentVersion: info.Version,
		CurrentSecurityVersion: info.Created, Report: o.Report,
		Health: RobotHealth(RobotHealthOptions{Connected: o.Connected, RequiredUnits: prof.Services.Required, Command: command, CommandTimeout: prof.Health.Timeout}),
	})
	if err != nil {
		bc.Close()
		disk.Close()
		return nil, nil, err
	}
	return u, func() error { return errorsJoin(disk.Close(), bc.Close()) }, nil
}

// diskOf is the whole disk a partition device belongs to, through sysfs
// (/sys/class/block/mmcblk0p1 → …/mmcblk0/mmcblk0p1).
func diskOf(part string, r rpi.Roots) (string, error) {
	sys := filepath.Join(orDefault(r.Sys, "/sys"), "class/block", filepath.Base(part))
	real, err := filepath.EvalSymlinks(sys)
	if err != nil {
		return "", fmt.Errorf("updates: find the disk of %s: %w (set update_disk)", part, err)
	}
	return filepath.Join(orDefault(r.Dev, "/dev"), filepath.Base(filepath.Dir(real))), nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
