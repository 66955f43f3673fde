package ota

import (
	"bytes"
	"errors"
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

// OpenPi opens the parts of the Raspberry Pi the agent runs on (the whole
// boot disk, o.Disk or the disk holding /, and its bootconfig partition:
// see openPiParts) and builds the updater on them with the image's profile
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
	parts, err := openPiParts(o)
	if err != nil {
		return nil, nil, fmt.Errorf("updates: %w", err)
	}
	command := o.HealthCommand
	if command == "" {
		command = prof.Health.Command
	}
	u, err = New(Options{Boot: parts.ctl, Disk: parts.disk, DiskSize: parts.size, TrustedKeys: keys,
		Source:   RegistrySource{Options: ociart.Options{Auth: authn.Anonymous, Transport: o.Transport}},
		StateDir: o.StateDir, CacheDir: o.CacheDir, Profile: info.Profile, AgentVersion: o.AgentVersion, CurrentVersion: info.Version,
		CurrentSecurityVersion: info.Created, Report: o.Report,
		Health: RobotHealth(RobotHealthOptions{Connected: o.Connected, RequiredUnits: prof.Services.Required, Command: command, CommandTimeout: prof.Health.Timeout}),
	})
	if err != nil {
		parts.Close()
		return nil, nil, err
	}
	return u, parts.Close, nil
}

// piParts are the parts of the Pi the updater works on, open.
type piParts struct {
	found      rpi.BootDisk
	disk       *os.File
	size       int64
	bootConfig *rpi.BlockDevice
	ctl        *rpi.Controller
}

// openPiParts finds the boot disk (o.Disk, else the disk holding the root
// filesystem: rpi.FindBootDisk), opens it and its bootconfig partition,
// and checks that they are what updates will write to: a disk with the
// Lekiwi A/B partition table whose partition 1 the bootconfig device is,
// and an autoboot.txt there naming the slots of a normal and a trial boot.
// A wrong disk is refused here, when the agent starts, not found out by
// the first update.
func openPiParts(o PiOptions) (_ *piParts, err error) {
	p := &piParts{}
	if o.Disk != "" {
		p.found, err = rpi.BootDiskAt(o.Disk)
	} else {
		p.found, err = rpi.FindBootDisk(o.Roots)
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if p.disk, err = os.OpenFile(p.found.Disk, os.O_RDWR, 0); err != nil {
		return nil, fmt.Errorf("open the boot disk: %w", err)
	}
	if p.size, err = p.disk.Seek(0, io.SeekEnd); err != nil {
		return nil, fmt.Errorf("size of the boot disk %s: %w", p.found.Disk, err)
	}
	plan, err := layout.ReadGPT(p.disk, p.size)
	if err == nil {
		err = layout.CheckAB(plan)
	}
	if err != nil {
		return nil, fmt.Errorf("the boot disk %s is not a disk with the Lekiwi A/B layout: %w", p.found.Disk, err)
	}
	if p.bootConfig, err = rpi.OpenDevice(p.found.BootConfig); err != nil {
		return nil, err
	}
	if err := samePartition(p.bootConfig, p.disk, plan.Part(layout.BootConfig)); err != nil {
		return nil, fmt.Errorf("%s is not partition %d of the boot disk %s: %w", p.found.BootConfig, layout.BootConfig, p.found.Disk, err)
	}
	p.ctl, err = rpi.New(rpi.Options{DeviceTree: filepath.Join(orDefault(o.Roots.Proc, "/proc"), "device-tree"), BootConfig: p.bootConfig, Reboot: o.Reboot})
	if err != nil {
		return nil, err
	}
	if _, err := p.ctl.Autoboot(); err != nil {
		return nil, fmt.Errorf("%s: %w", p.found.BootConfig, err)
	}
	return p, nil
}

// samePartition checks that dev has the size of part and starts with the
// bytes at part's start on disk (a FAT's boot sector holds its volume id).
func samePartition(dev *rpi.BlockDevice, disk io.ReaderAt, part layout.Partition) error {
	if dev.Size() != part.Size {
		return fmt.Errorf("it is %d bytes, the partition %d", dev.Size(), part.Size)
	}
	a, b := make([]byte, 4096), make([]byte, 4096)
	if _, err := dev.ReadAt(a, 0); err != nil {
		return err
	}
	if _, err := disk.ReadAt(b, part.Start); err != nil {
		return fmt.Errorf("read the boot disk at %d: %w", part.Start, err)
	}
	if !bytes.Equal(a, b) {
		return errors.New("its first 4 KiB differ from the partition's")
	}
	return nil
}

// Close closes what is open.
func (p *piParts) Close() error {
	var errs []error
	if p.bootConfig != nil {
		errs = append(errs, p.bootConfig.Close())
	}
	if p.disk != nil {
		errs = append(errs, p.disk.Close())
	}
	return errors.Join(errs...)
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
