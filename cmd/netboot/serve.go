package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/netboot/controlapi"
	"github.com/lekiwi/heartbeat/netboot/dhcp"
	"github.com/lekiwi/heartbeat/netboot/station"
)

type serveFlags struct {
	iface, serverIP, dhcpMode        string
	poolStart, poolEnd, leaseFile    string
	subnetMask, router               string
	tftpAddr, httpAddr, stationURL   string
	bootDir, kernel, initramfs, args string
	image, imageVersion, stateDir    string
	profileImages                    []string
	control, cert, key, ca           string
	noDHCP, pxePort                  bool
}

func newServe() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the netboot station",
		Long: `Run the netboot station until interrupted.

DHCP (port 67): by default a proxyDHCP that answers only Raspberry Pi
network boots and adds the boot options; the factory's own DHCP server
keeps giving out addresses. With --dhcp-mode full the station is the DHCP
server (--pool-start/--pool-end, leases kept in --lease-file). --no-dhcp runs
none (another proxyDHCP points the Pis here). Every device heard is reported
to control, Pi or not.

TFTP (port 69): <serial>/config.txt and <serial>/cmdline.txt are generated
for each board (they boot --kernel and --initramfs and carry this station's
URL and a one-time token); every other file comes from --boot-dir (Debian
raspi-firmware layout, as netboot kit build writes it; files in
--boot-dir/pi4 or /pi5 win for that model).

HTTP (--http-addr): the boards' API (report, plan, progress), the image
(--image, or the --profile-image of the board's profile, each with its .bmap
next to it, Range supported), and for people /status and /metrics.

Control (--control, mTLS with --cert/--key, trusting --ca): boards wait at
the identity step while control is unreachable and continue by themselves
when it returns; events are queued in --state-dir, never lost.

Ports 67 and 69 need root or CAP_NET_BIND_SERVICE (and CAP_NET_RAW for
DHCP on an interface).`,
		Example: `  # Proxy mode next to the factory's DHCP server, on eth0 (10.0.0.5):
  netboot serve --interface eth0 --server-ip 10.0.0.5 \
    --boot-dir /srv/netboot/boot --image /srv/netboot/lekiwi-2025.1.img \
    --state-dir /var/lib/netboot \
    --control https://control.factory:8443 \
    --cert station-1.crt --key station-1.key --ca fleet-ca.crt

  # Then watch the floor:
  netboot status --station http://10.0.0.5:8080`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runServe(ctx, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.iface, "interface", "", "network interface the Pis are on (e.g. eth0); empty: all")
	fl.StringVar(&f.serverIP, "server-ip", "", "this station's IPv4 address on that network (DHCP option 54/66, the URL boards use) (required)")
	fl.StringVar(&f.dhcpMode, "dhcp-mode", "proxy", "proxy (next to the factory's DHCP server) or full (the station gives out addresses)")
	fl.StringVar(&f.poolStart, "pool-start", "", "full mode: first address to give out")
	fl.StringVar(&f.poolEnd, "pool-end", "", "full mode: last address to give out")
	fl.StringVar(&f.subnetMask, "subnet-mask", "255.255.255.0", "full mode: the network's mask")
	fl.StringVar(&f.router, "router", "", "full mode: default gateway to hand out (optional)")
	fl.StringVar(&f.leaseFile, "lease-file", "", "full mode: where leases persist (default <state-dir>/leases.json)")
	fl.BoolVar(&f.pxePort, "pxe-port", true, "proxy mode: also answer on the PXE port 4011")
	fl.BoolVar(&f.noDHCP, "no-dhcp", false, "run no DHCP server (another proxyDHCP sends the Pis here)")
	fl.StringVar(&f.tftpAddr, "tftp-addr", ":69", "TFTP listen address")
	fl.StringVar(&f.httpAddr, "http-addr", ":8080", "HTTP listen address (boards' API, image, /status, /metrics)")
	fl.StringVar(&f.stationURL, "url", "", "URL boards reach the HTTP API at (default http://<server-ip>:<http port>)")
	fl.StringVar(&f.bootDir, "boot-dir", "", "directory of boot files: firmware, device trees, kernel, initramfs — netboot kit build writes one (required)")
	fl.StringVar(&f.kernel, "kernel", "vmlinuz", "provisioning kernel, a file in --boot-dir")
	fl.StringVar(&f.initramfs, "initramfs", "initrd.img", "provisioning initramfs, a file in --boot-dir")
	fl.StringVar(&f.args, "kernel-args", station.DefaultKernelArgs, "kernel arguments before the station's own in cmdline.txt")
	fl.StringVar(&f.image, "image", "", "raw robot image to install, with its block map at <image>.bmap (required)")
	fl.StringVar(&f.imageVersion, "image-version", "", "image version told to boards (default the image's file name)")
	fl.StringArrayVar(&f.profileImages, "profile-image", nil, "PROFILE=PATH: the image for boards matched to that profile (repeat: --profile-image lekiwi=lekiwi.img --profile-image xle=xle.img); --image serves the others")
	fl.StringVar(&f.stateDir, "state-dir", "/var/lib/lekiwi-netboot", "board states and the event queue for control")
	fl.StringVar(&f.control, "control", "", "control's URL, https://host:port (required)")
	fl.StringVar(&f.cert, "cert", "", "the station's node certificate (provision ca issue-node) (required)")
	fl.StringVar(&f.key, "key", "", "its private key (required)")
	fl.StringVar(&f.ca, "ca", "", "the fleet CA certificate, to trust control (required)")
	return cmd
}

func runServe(ctx context.Context, f serveFlags) error {
	cfg, err := f.config()
	if err != nil {
		return err
	}
	client, err := controlapi.New(controlapi.Config{URL: f.control, CertFile: f.cert, KeyFile: f.key, CAFile: f.ca})
	if err != nil {
		return err
	}
	cfg.Control = client
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Registerer, cfg.Gatherer = reg, reg
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	s, err := station.New(cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// config turns the flags into a station configuration (without control).
func (f serveFlags) config() (station.Config, error) {
	var missing []string
	for name, v := range map[string]string{"--server-ip": f.serverIP, "--boot-dir": f.bootDir, "--image": f.image,
		"--control": f.control, "--cert": f.cert, "--key": f.key, "--ca": f.ca, "--state-dir": f.stateDir} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return station.Config{}, fmt.Errorf("missing %v: see netboot serve --help", missing)
	}
	ip, err := netip.ParseAddr(f.serverIP)
	if err != nil || !ip.Is4() {
		return station.Config{}, fmt.Errorf("--server-ip %q: want this station's IPv4 address on the boards' network", f.serverIP)
	}
	cfg := station.Config{StateDir: f.stateDir, BootDir: f.bootDir, Kernel: f.kernel, Initramfs: f.initramfs, KernelArgs: f.args,
		Image: f.image, ImageVersion: f.imageVersion, HTTPAddr: f.httpAddr, TFTPAddr: f.tftpAddr, StationURL: f.stationURL}
	for _, pi := range f.profileImages {
		prof, path, ok := strings.Cut(pi, "=")
		if !ok || prof == "" || path == "" {
			return station.Config{}, fmt.Errorf("--profile-image %q: want PROFILE=PATH, e.g. xle=/srv/netboot/xle-2025.1.img", pi)
		}
		if cfg.ProfileImages == nil {
			cfg.ProfileImages = map[string]string{}
		}
		if _, dup := cfg.ProfileImages[prof]; dup {
			return station.Config{}, fmt.Errorf("--profile-image: profile %s given twice", prof)
		}
		cfg.ProfileImages[prof] = path
	}
	if cfg.StationURL == "" {
		_, port, err := net.SplitHostPort(f.httpAddr)
		if err != nil {
			return station.Config{}, fmt.Errorf("--http-addr %q: %w", f.httpAddr, err)
		}
		if _, err := strconv.Atoi(port); err != nil || port == "0" {
			return station.Config{}, fmt.Errorf("--http-addr %q: give a fixed port, boards are told it", f.httpAddr)
		}
		cfg.StationURL = "http://" + net.JoinHostPort(ip.String(), port)
	}
	if f.noDHCP {
		return cfg, nil
	}
	dc := &dhcp.Config{Interface: f.iface, ServerIP: ip, Mode: dhcp.Mode(f.dhcpMode)}
	switch dc.Mode {
	case dhcp.ModeProxy:
		if f.pxePort {
			dc.PXEPort = dhcp.PXEPort
		}
	case dhcp.ModeFull:
		if dc.PoolStart, err = netip.ParseAddr(f.poolStart); err != nil {
			return station.Config{}, fmt.Errorf("--dhcp-mode full needs --pool-start: %w", err)
		}
		if dc.PoolEnd, err = netip.ParseAddr(f.poolEnd); err != nil {
			return station.Config{}, fmt.Errorf("--dhcp-mode full needs --pool-end: %w", err)
		}
		mask, err := netip.ParseAddr(f.subnetMask)
		if err != nil || !mask.Is4() {
			return station.Config{}, fmt.Errorf("--subnet-mask %q: want a dotted IPv4 mask", f.subnetMask)
		}
		m := mask.As4()
		dc.SubnetMask = net.IPv4Mask(m[0], m[1], m[2], m[3])
		if f.router != "" {
			if dc.Router, err = netip.ParseAddr(f.router); err != nil {
				return station.Config{}, fmt.Errorf("--router: %w", err)
			}
		}
		dc.LeaseFile = f.leaseFile
		if dc.LeaseFile == "" {
			dc.LeaseFile = filepath.Join(f.stateDir, "leases.json")
		}
	default:
		return station.Config{}, fmt.Errorf("--dhcp-mode %q: want proxy or full", f.dhcpMode)
	}
	cfg.DHCP = dc
	return cfg, nil
}
