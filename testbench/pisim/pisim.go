package pisim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/lekiwi/heartbeat/internal/netns"
	"github.com/lekiwi/heartbeat/netboot/pi"
	"github.com/lekiwi/heartbeat/netboot/tftp/tftptest"
	"github.com/lekiwi/heartbeat/raspberrypi"
)

const piVendorClass = pi.VendorClass

// Pi is one simulated board.
type Pi struct {
	Model    int // 4 (BCM2711: Pi 4, 400, CM4) or 5 (BCM2712: Pi 5, 500, CM5)
	MAC      net.HardwareAddr
	Serial   raspberrypi.Serial
	Revision raspberrypi.Revision
}

func (p Pi) String() string { return fmt.Sprintf("Pi %d %s (serial %s)", p.Model, p.MAC, p.Serial) }

func (p Pi) check() error {
	if p.Model != 4 && p.Model != 5 {
		return fmt.Errorf("pisim: model %d: only the Pi 4 and Pi 5 EEPROM bootloaders are simulated", p.Model)
	}
	if len(p.MAC) != 6 {
		return fmt.Errorf("pisim: MAC %v is not an Ethernet address", p.MAC)
	}
	return nil
}

func (p Pi) guid() ([]byte, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	fourcc := pi.FourCCPi4
	if p.Model == 5 {
		fourcc = pi.FourCCPi5
	}
	return pi.EncodeClientGUID(fourcc, p.Revision, p.MAC, p.Serial)
}

// defaultDeviceTree is the firmware's device tree for the board.
func (p Pi) defaultDeviceTree() string {
	model := ""
	if b, err := p.Revision.Decode(); err == nil {
		model = b.Model
	}
	if p.Model == 5 {
		switch model {
		case "500":
			return "bcm2712-rpi-500.dtb"
		case "CM5", "CM5 Lite":
			return "bcm2712-rpi-cm5-cm5io.dtb"
		}
		return "bcm2712-rpi-5-b.dtb"
	}
	switch model {
	case "400":
		return "bcm2711-rpi-400.dtb"
	case "CM4":
		return "bcm2711-rpi-cm4.dtb"
	}
	return "bcm2711-rpi-4-b.dtb"
}

// defaultKernels are the names the firmware tries in turn without kernel=:
// 64-bit is the default on both (arm_64bit=1), and the Pi 5 firmware
// prefers its 16K-page kernel.
func (p Pi) defaultKernels() []string {
	if p.Model == 5 {
		return []string{"kernel_2712.img", "kernel8.img"}
	}
	return []string{"kernel8.img"}
}

// File is one TFTP read the simulated Pi made.
type File struct {
	Name      string        // as requested, prefix included
	Stage     string        // "bootloader" or "firmware"
	ProbeOnly bool          // only the tsize probe (existence check), no transfer
	Found     bool          // false: the server answered "file not found"
	Size      int64         // tsize from the probe (-1 if not answered)
	Bytes     int64         // bytes received in the real read
	BlockSize int           // negotiated blksize
	Duration  time.Duration // probe + read
	Content   []byte        // the bytes received, with Config.KeepContent
}

// Result is one complete simulated boot.
type Result struct {
	Pi      Pi
	DHCP    DHCPResult
	Prefix  string // TFTP prefix in use: "<serial>/" or "" when the bootloader dropped it
	Files   []File
	Config  BootConfig
	Cmdline string        // content of cmdline.txt: what the kernel would get
	TFTP    time.Duration // first RRQ → last file received
	Total   time.Duration // first DISCOVER → last file received
}

// Fetched returns the files actually transferred (not the probes or the
// missing optional ones), in order.
func (r Result) Fetched() []File {
	var out []File
	for _, f := range r.Files {
		if f.Found && !f.ProbeOnly {
			out = append(out, f)
		}
	}
	return out
}

// Boot runs one simulated Pi through a fresh Fleet: for a single boot.
func Boot(ctx context.Context, cfg Config, p Pi) (Result, error) {
	f, err := NewFleet(cfg)
	if err != nil {
		return Result{Pi: p}, err
	}
	defer f.Close()
	return f.Boot(ctx, p)
}

// Boot runs p's DHCP exchange and TFTP boot-file sequence. It is safe to
// call concurrently for different Pis (distinct MACs).
func (f *Fleet) Boot(ctx context.Context, p Pi) (Result, error) {
	res := Result{Pi: p}
	if err := p.check(); err != nil {
		return res, err
	}
	start := time.Now()
	d, err := f.dhcp(ctx, p)
	res.DHCP = d
	if err != nil {
		return res, err
	}
	// TFTP sockets are created by tftptest per transfer, on this thread:
	// run the sequence inside the Pis' namespace.
	err = netns.Run(f.cfg.Netns, func() error {
		s := &sequence{p: p, res: &res, keep: f.cfg.KeepContent, c: tftptest.Client{
			Server:    netip.AddrPortFrom(d.TFTPServer, uint16(f.cfg.TFTPPort)),
			BlockSize: f.cfg.BlockSize, Timeout: f.cfg.TFTPTimeout, Retries: f.cfg.TFTPRetries,
		}}
		t0 := time.Now()
		err := s.run(ctx)
		res.TFTP = time.Since(t0)
		return err
	})
	res.Total = time.Since(start)
	return res, err
}

// sequence is the TFTP part of one boot.
type sequence struct {
	p    Pi
	c    tftptest.Client
	res  *Result
	keep bool // File.Content
}

func isNotFound(err error) bool {
	var se *tftptest.ServerError
	return errors.As(err, &se) && se.Code == 1
}

// probe is the bootloader's existence check: RRQ with tsize, then "early
// terminate". It reports whether the file exists.
func (s *sequence) probe(ctx context.Context, stage, name string) (bool, error) {
	t := time.Now()
	r, err := s.c.Probe(ctx, name)
	f := File{Name: name, Stage: stage, ProbeOnly: true, Size: r.TSize, BlockSize: r.BlockSize, Duration: time.Since(t)}
	if isNotFound(err) {
		s.res.Files = append(s.res.Files, f)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("pisim: %s probing %q: %w", s.p, name, err)
	}
	f.Found = true
	s.res.Files = append(s.res.Files, f)
	return true, nil
}

// fetch is probe + read of one file. A missing file is an error only when
// required; otherwise it returns nil content and found=false.
func (s *sequence) fetch(ctx context.Context, stage, name string, required bool) (content []byte, found bool, err error) {
	t := time.Now()
	data, r, err := s.c.Fetch(ctx, name)
	f := File{Name: name, Stage: stage, Size: r.TSize, Bytes: r.Bytes, BlockSize: r.BlockSize, Duration: time.Since(t)}
	if isNotFound(err) {
		s.res.Files = append(s.res.Files, f)
		if required {
			return nil, false, fmt.Errorf("pisim: %s: the station has no %q, which the %s needs: %w", s.p, name, stage, err)
		}
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("pisim: %s fetching %q: %w", s.p, name, err)
	}
	f.Found = true
	if s.keep {
		f.Content = data
	}
	s.res.Files = append(s.res.Files, f)
	return data, true, nil
}

func (s *sequence) run(ctx context.Context) error {
	prefix := s.p.Serial.String() + "/"
	var configTxt []byte
	switch s.p.Model {
	case 4:
		// The EEPROM bootloader looks for start4.elf in the serial
		// directory to decide the prefix, reads config.txt, checks for a
		// recovery image, then loads the VideoCore firmware.
		ok, err := s.probe(ctx, "bootloader", prefix+"start4.elf")
		if err != nil {
			return err
		}
		if !ok {
			prefix = ""
		}
		if _, _, err := s.fetch(ctx, "bootloader", prefix+"config.txt", false); err != nil {
			return err
		}
		if _, err := s.probe(ctx, "bootloader", prefix+"recover4.elf"); err != nil {
			return err
		}
		for _, name := range []string{"start4.elf", "fixup4.dat"} {
			if _, _, err := s.fetch(ctx, "bootloader", prefix+name, true); err != nil {
				return err
			}
		}
		// start4.elf reads config.txt again for itself.
		c, _, err := s.fetch(ctx, "firmware", prefix+"config.txt", false)
		if err != nil {
			return err
		}
		configTxt = c
	case 5:
		// The firmware is in the EEPROM: config.txt is the first file; the
		// prefix is dropped when the serial directory has none.
		c, ok, err := s.fetch(ctx, "firmware", prefix+"config.txt", false)
		if err != nil {
			return err
		}
		if !ok {
			prefix = ""
			if c, _, err = s.fetch(ctx, "firmware", prefix+"config.txt", false); err != nil {
				return err
			}
		}
		configTxt = c
		// ENABLE_SELF_UPDATE (default on) looks for an EEPROM update.
		if _, err := s.probe(ctx, "firmware", prefix+"pieeprom.sig"); err != nil {
			return err
		}
	}
	s.res.Prefix = prefix
	cfg := ParseConfigTxt(string(configTxt), s.p.Model)
	s.res.Config = cfg

	// Kernel name first: auto_initramfs derives the initramfs from it. The
	// default names are probed in turn, as the firmware does.
	kernel := cfg.Kernel
	if kernel == "" {
		for _, k := range s.p.defaultKernels() {
			ok, err := s.probe(ctx, "firmware", prefix+k)
			if err != nil {
				return err
			}
			if ok {
				kernel = k
				break
			}
		}
		if kernel == "" {
			return fmt.Errorf("pisim: %s: none of the default kernels %v is on the station and config.txt names none", s.p, s.p.defaultKernels())
		}
	}
	initramfs, initRequired := cfg.Initramfs, true
	if len(initramfs) == 0 && cfg.AutoInitramfs {
		if name, ok := autoInitramfs(kernel); ok {
			initramfs, initRequired = []string{name}, false
		}
	}
	// Order observed from the firmware (rpi-eeprom issue 87): initramfs,
	// device tree, cmdline, kernel.
	for _, name := range initramfs {
		if _, _, err := s.fetch(ctx, "firmware", prefix+name, initRequired); err != nil {
			return err
		}
	}
	dtb := cfg.DeviceTree
	if dtb == "" {
		dtb = s.p.defaultDeviceTree()
	}
	if _, _, err := s.fetch(ctx, "firmware", prefix+dtb, true); err != nil {
		return err
	}
	cmdlineName := cfg.Cmdline
	if cmdlineName == "" {
		cmdlineName = "cmdline.txt"
	}
	cmdline, _, err := s.fetch(ctx, "firmware", prefix+cmdlineName, false)
	if err != nil {
		return err
	}
	s.res.Cmdline = strings.TrimSpace(string(cmdline))
	_, _, err = s.fetch(ctx, "firmware", prefix+kernel, true)
	return err
}

// autoInitramfs is the firmware's auto_initramfs naming: kernelX.img →
// initramfsX, kernel_2712.img → initramfs_2712.
func autoInitramfs(kernel string) (string, bool) {
	base, ok := strings.CutPrefix(kernel, "kernel")
	if !ok {
		return "", false
	}
	base, ok = strings.CutSuffix(base, ".img")
	if !ok {
		return "", false
	}
	return "initramfs" + base, true
}

// hasPiBoot reports whether an offer's option 43 carries the boot menu the
// bootloader looks for.
func hasPiBoot(m *dhcpv4.DHCPv4) bool {
	b := m.Options.Get(dhcpv4.OptionVendorSpecificInformation)
	if b == nil {
		return false
	}
	o, err := pi.ParseOption43(b)
	return err == nil && o.HasPiBoot()
}
