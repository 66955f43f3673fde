package robotsim

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lekiwi/heartbeat/agent"
	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/firmware"
	"github.com/lekiwi/heartbeat/agent/bootctl/rpi"
	"github.com/lekiwi/heartbeat/agent/collect"
	"github.com/lekiwi/heartbeat/agent/identity"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/agent/ota/updatecmd"
	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/control/pki"
	"github.com/lekiwi/heartbeat/image/assemble"
	"github.com/lekiwi/heartbeat/image/customize"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/image/ociart"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/image/sparse"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"

	"github.com/google/go-containerregistry/pkg/authn"
)

// OTAWatchdog is the hardware watchdog timeout of an OTARobot's modelled
// Pi (systemd RuntimeWatchdogSec on the image).
const OTAWatchdog = time.Minute

// OTARobot is a robot for end-to-end update scenarios, built from real
// parts: its SD card is a copy of a built image file customized with its
// identity (image/customize); its hardware is the Pi firmware model
// (agent/bootctl/bootctltest/firmware) over that file; while booted it runs what the
// agent daemon wires for updates — the agent runtime over mTLS, the update
// handler (agent/ota/updatecmd) and the updater (agent/ota) with the rpi
// boot controller on the card's bootconfig partition.
//
// A reboot is modelled as a process restart: the boot controller's reboot
// hook sets the firmware's tryboot flag and stops the running instance;
// the firmware then selects a slot and a fresh instance starts with
// nothing carried over but the card and the persistent state directory.
// The booted slot's image.json (build metadata on each boot slot) becomes
// the instance's image info and its os-release PRETTY_NAME, as the root
// filesystem of that slot would provide.
type OTARobot struct {
	ID   string
	Type protocol.RobotType
	Dir  string
	Disk string // the card: a customized copy of the image
	// HealthCommand replaces the profile's health command (update_health_command).
	HealthCommand string
	// HangTrial makes every trial boot hang before the agent starts; the
	// firmware's watchdog then resets the Pi.
	HangTrial bool

	servers []string
	ident   *identity.Identity
	keysDir string
	plan    *layout.Plan
	pi      *firmware.Pi
	piDisk  *os.File
	dt      string
	log     *slog.Logger
	// downloaded counts registry response body bytes over every boot.
	downloaded atomic.Int64

	mu      sync.Mutex
	boots   []firmware.Boot
	running *agent.Agent
	version string // image version of the booted slot
	errs    []error
}

// OTARobotOptions describe one robot.
type OTARobotOptions struct {
	ID      string
	Type    protocol.RobotType
	Dir     string
	Image   string // the built image (v1)
	Servers []string
	CA      *pki.CA
	// KeysDir holds the trusted update keys (the image's baked ones).
	KeysDir       string
	HealthCommand string
	HangTrial     bool
	Logger        *slog.Logger
}

// NewOTARobot copies the image to the robot's card (sparse), gives the robot
// an identity signed by the CA and writes it into the card with
// image/customize, as the bench or the factory does.
func NewOTARobot(ctx context.Context, o OTARobotOptions) (*OTARobot, error) {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	r := &OTARobot{ID: o.ID, Type: o.Type, Dir: o.Dir, Disk: filepath.Join(o.Dir, "card.img"), HealthCommand: o.HealthCommand,
		HangTrial: o.HangTrial, servers: o.Servers, keysDir: o.KeysDir, dt: filepath.Join(o.Dir, "device-tree"), log: o.Logger}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if err := copySparse(ctx, o.Image, r.Disk); err != nil {
		return nil, err
	}
	ident, err := NewIdentity(o.CA, o.ID, 0, filepath.Join(r.stateDir(), "identity"))
	if err != nil {
		return nil, err
	}
	r.ident = ident
	keyPEM, certPEM, err := identityPEM(filepath.Join(r.stateDir(), "identity"))
	if err != nil {
		return nil, err
	}
	if err := customize.Apply(r.Disk, customize.Robot{RobotID: o.ID, Hostname: lab.Hostname(o.ID), CertPEM: certPEM, KeyPEM: keyPEM, CAPEM: o.CA.CertPEM}); err != nil {
		return nil, fmt.Errorf("customize the card of %s: %w", o.ID, err)
	}
	if r.piDisk, err = os.Open(r.Disk); err != nil {
		return nil, err
	}
	st, err := r.piDisk.Stat()
	if err != nil {
		return nil, err
	}
	if r.plan, err = layout.ReadGPT(r.piDisk, st.Size()); err != nil {
		return nil, fmt.Errorf("card of %s: %w", o.ID, err)
	}
	r.pi = firmware.NewPi(r.piDisk, st.Size(), firmware.PiOptions{DeviceTree: r.dt, Watchdog: OTAWatchdog})
	return r, nil
}

func (r *OTARobot) stateDir() string { return filepath.Join(r.Dir, "persistent", "agent") }

// identityPEM reads the saved identity's key and certificate.
func identityPEM(dir string) (keyPEM, certPEM []byte, err error) {
	if keyPEM, err = os.ReadFile(filepath.Join(dir, "key.pem")); err != nil {
		return nil, nil, err
	}
	if certPEM, err = os.ReadFile(filepath.Join(dir, "cert.pem")); err != nil {
		return nil, nil, err
	}
	if b, _ := pem.Decode(keyPEM); b == nil {
		return nil, nil, fmt.Errorf("%s/key.pem is not PEM", dir)
	} else if _, err := x509.ParsePKCS8PrivateKey(b.Bytes); err != nil {
		return nil, nil, fmt.Errorf("%s/key.pem: %w", dir, err)
	}
	return keyPEM, certPEM, nil
}

func copySparse(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := sparse.Copy(ctx, out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

// Close releases the card.
func (r *OTARobot) Close() error { return r.piDisk.Close() }

// Downloaded is the registry bytes the robot received so far.
func (r *OTARobot) Downloaded() int64 { return r.downloaded.Load() }

// Boots lists the firmware's boots so far.
func (r *OTARobot) Boots() []firmware.Boot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]firmware.Boot(nil), r.boots...)
}

// Version is the image version of the running slot ("" while down).
func (r *OTARobot) Version() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.version
}

// Connected reports whether the running instance holds a session.
func (r *OTARobot) Connected() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running != nil && r.running.State() == agent.Connected
}

// Errors are the instance start failures seen so far.
func (r *OTARobot) Errors() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs...)
}

// Run powers the robot on and keeps it running until ctx ends: boot, run
// an instance until it asks for a reboot, boot again. At most maxBoots
// boots (a robot in a reboot loop stops there).
func (r *OTARobot) Run(ctx context.Context, maxBoots int) {
	for range maxBoots {
		b, err := r.pi.Boot()
		if err != nil {
			r.fail(fmt.Errorf("firmware: %w", err))
			return
		}
		if b.Trial && r.HangTrial {
			// The trial hangs before the agent starts; nothing kicks the
			// watchdog, which resets the Pi into its default slot.
			reset, nb, err := r.pi.Advance(OTAWatchdog + time.Second)
			if err != nil || !reset {
				r.fail(fmt.Errorf("hung trial: watchdog reset %v: %w", reset, err))
				return
			}
			r.record(b)
			b = nb
		}
		r.record(b)
		rebooted, err := r.instance(ctx, b)
		if err != nil {
			r.fail(err)
			return
		}
		if !rebooted {
			return
		}
	}
	r.fail(fmt.Errorf("robot %s: still rebooting after %d boots", r.ID, maxBoots))
}

func (r *OTARobot) record(b firmware.Boot) {
	r.mu.Lock()
	r.boots = append(r.boots, b)
	r.mu.Unlock()
}

func (r *OTARobot) fail(err error) {
	r.mu.Lock()
	r.errs = append(r.errs, err)
	r.mu.Unlock()
}

// fileSection is the bootconfig partition of the card: a window on the
// card file, as /dev/mmcblk0p1 is on /dev/mmcblk0.
type fileSection struct {
	f           *os.File
	start, size int64
}

func (s fileSection) ReadAt(p []byte, off int64) (int, error) {
	if off >= s.size {
		return 0, io.EOF
	}
	if rest := s.size - off; int64(len(p)) > rest {
		n, err := s.f.ReadAt(p[:rest], s.start+off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return s.f.ReadAt(p, s.start+off)
}

func (s fileSection) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("write of %d bytes at %d is outside the %d-byte partition", len(p), off, s.size)
	}
	return s.f.WriteAt(p, s.start+off)
}

func (s fileSection) Sync() error { return s.f.Sync() }
func (s fileSection) Size() int64 { return s.size }

// countingTransport counts response body bytes.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(req)
	if err == nil {
		resp.Body = countingBody{resp.Body, c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// bootedInfo reads image.json from the booted boot partition.
func (r *OTARobot) bootedInfo(b firmware.Boot) (*assemble.Info, error) {
	part := r.plan.Part(b.Partition)
	fsys, err := fat.Open(io.NewSectionReader(r.piDisk, part.Start, part.Size), part.Size)
	if err != nil {
		return nil, fmt.Errorf("booted partition %d: %w", b.Partition, err)
	}
	raw, err := fsys.ReadFile(assemble.BootInfoFile)
	if err != nil {
		return nil, fmt.Errorf("booted partition %d: %w", b.Partition, err)
	}
	var info assemble.Info
	if err := json.Unmarshal(raw, &info); err != nil {
		return nil, fmt.Errorf("booted partition %d: %w", b.Partition, err)
	}
	return &info, nil
}

// instance runs one boot of the system until ctx ends (false) or the
// system reboots (true).
func (r *OTARobot) instance(ctx context.Context, b firmware.Boot) (rebooted bool, err error) {
	info, err := r.bootedInfo(b)
	if err != nil {
		return false, err
	}
	// What the booted root filesystem provides: /etc/lekiwi/image.json and
	// /etc/os-release.
	sys := filepath.Join(r.Dir, "booted")
	board := lab.Pi5(len(r.ID), lab.Hostname(r.ID))
	board.OSPretty = fmt.Sprintf("Lekiwi OS %s (slot %s)", info.Version, b.Slot)
	roots, err := board.WriteTree(sys)
	if err != nil {
		return false, err
	}
	imageInfo := filepath.Join(sys, "image.json")
	raw, _ := json.Marshal(info)
	if err := os.WriteFile(imageInfo, raw, 0o644); err != nil {
		return false, err
	}
	prof, err := profiles.Load(info.Profile)
	if err != nil {
		return false, err
	}

	ictx, stop := context.WithCancel(ctx)
	defer stop()
	var rebootedFlag atomic.Bool
	restart := reboot.Func(func(rctx context.Context, arg string) error {
		if err := r.pi.Reboot(rctx, arg); err != nil {
			return err
		}
		rebootedFlag.Store(true)
		stop() // the system goes down
		return nil
	})

	q, err := queue.Open(filepath.Join(r.stateDir(), queue.FileName), queue.Options{})
	if err != nil {
		return false, err
	}
	defer q.Close()
	disk, err := os.OpenFile(r.Disk, os.O_RDWR, 0)
	if err != nil {
		return false, err
	}
	defer disk.Close()
	bc := r.plan.Part(layout.BootConfig)
	ctl, err := rpi.New(rpi.Options{DeviceTree: r.dt, BootConfig: fileSection{f: disk, start: bc.Start, size: bc.Size}, Reboot: restart})
	if err != nil {
		return false, err
	}
	var running atomic.Pointer[agent.Agent]
	// From here the instance mirrors agent/daemon's setupUpdates and
	// ota.OpenPi, with the card file for the block devices and the
	// firmware model for reboot(2).
	stateDir := filepath.Join(r.stateDir(), "update")
	h, err := updatecmd.New(updatecmd.Options{StateDir: stateDir, Logger: r.log})
	if err != nil {
		return false, err
	}
	keys, err := releaseKeys(r.keysDir)
	if err != nil {
		return false, err
	}
	command := r.HealthCommand
	if command == "" {
		// The profile's check, relocated to the robot's persistent directory.
		command = fmt.Sprintf("test -d %s && test -w %s", r.stateDir(), r.stateDir())
	}
	systemctl := filepath.Join(r.Dir, "systemctl")
	if err := os.WriteFile(systemctl, []byte("#!/bin/sh\n# every unit of the booted system is up\nshift 2\nfor u; do echo active; done\n"), 0o755); err != nil {
		return false, err
	}
	st, err := disk.Stat()
	if err != nil {
		return false, err
	}
	transport := countingTransport{next: r.ident.HTTPClient().Transport, n: &r.downloaded}
	u, err := ota.New(ota.Options{Boot: ctl, Disk: disk, DiskSize: st.Size(), TrustedKeys: keys,
		Source:   ota.RegistrySource{Options: ociart.Options{Auth: authn.Anonymous, Transport: transport}},
		StateDir: stateDir, CacheDir: filepath.Join(stateDir, "cache"), Profile: info.Profile, AgentVersion: "1.0.0", CurrentVersion: info.Version, CurrentSecurityVersion: info.Created,
		Report: h.Report, BootID: func() (string, error) { return b.ID, nil }, HealthRetry: 200 * time.Millisecond, RetryDelay: 200 * time.Millisecond, ProgressInterval: 200 * time.Millisecond,
		Health: ota.RobotHealth(ota.RobotHealthOptions{Connected: func() bool { a := running.Load(); return a != nil && a.State() == agent.Connected },
			RequiredUnits: prof.Services.Required, Systemctl: systemctl, Command: command, CommandTimeout: 5 * time.Second}),
	})
	if err != nil {
		return false, err
	}
	col := collect.New(collect.Options{Roots: roots, Statfs: func(string) (collect.DiskUsage, error) {
		return collect.DiskUsage{TotalBytes: 32 << 30, UsedBytes: 4 << 30}, nil
	}})
	hw, err := collect.ReadHardware(roots)
	if err != nil {
		return false, err
	}
	a, err := agent.New(agent.Options{RobotID: r.ID, RobotType: r.Type, Servers: r.servers, Queue: q, Collector: col, Hardware: hw,
		AgentVersion: "1.0.0", Image: collect.Image(*info), HeartbeatInterval: time.Second, TelemetrySampleInterval: 200 * time.Millisecond, TelemetryMinInterval: 500 * time.Millisecond,
		FirstReconnectJitter: -1, Logger: r.log, HTTPClient: r.ident.HTTPClient(), Identity: r.ident,
		Commands: map[string]agent.CommandHandler{protocol.CommandUpdate: h.Handle}})
	if err != nil {
		return false, err
	}
	running.Store(a)
	r.mu.Lock()
	r.running, r.version = a, info.Version
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.running, r.version = nil, ""
		r.mu.Unlock()
	}()
	handlerDone := make(chan struct{})
	go func() { defer close(handlerDone); h.Run(ictx, u, a) }()
	err = a.Run(ictx)
	<-handlerDone
	if rebootedFlag.Load() {
		return true, nil
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return false, err
	}
	return false, nil
}

func releaseKeys(dir string) ([]ed25519.PublicKey, error) {
	keys, err := release.ReadPublicKeys(dir)
	if err != nil {
		return nil, fmt.Errorf("update keys: %w", err)
	}
	return keys, nil
}

// Slot is the slot the robot runs (or last ran).
func (r *OTARobot) Slot() bootctl.Slot {
	bs := r.Boots()
	if len(bs) == 0 {
		return ""
	}
	return bs[len(bs)-1].Slot
}
