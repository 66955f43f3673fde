package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/agent/factory"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
)

func newFactoryCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "factory",
		Short: "Factory floor steps, run in the netboot provisioning environment",
	}
	cmd.AddCommand(newFactoryProbeCmd(), newFactoryRunCmd())
	return cmd
}

func newFactoryRunCmd() *cobra.Command {
	var (
		o                          factory.RunOptions
		procRoot, sysRoot, devRoot string
		noReboot                   bool
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Probe, report to the netboot station, install the image and identity, reboot",
		Long: `Run is the factory run of the provisioning initramfs. It probes the board,
reports it to the netboot station and does what the station's plan says:
wait (for the robot's identity from control), hold (a technician must fix
the robot: the reason is printed, and the board checks again by itself),
or install: stream the image onto the storage device the station chose,
verify it, write the robot's identity, and reboot into the new system.

The station URL and the board token come from the kernel command line
(lekiwi.station=, lekiwi.token=) unless given. Each step is reported to the
station; a failed step is retried, and an image already on the disk is not
written again. When a step still fails the command exits non-zero with the
reason.`,
		Example: `  agent factory run
  agent factory run --station http://10.0.0.1:8080 --token T --no-reboot`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Probe = factory.Options{ProcRoot: procRoot, SysRoot: sysRoot, DevRoot: devRoot}
			o.Log = cmd.ErrOrStderr()
			// The provisioning initramfs has no service manager: the run
			// reboots with reboot(2) itself.
			o.Reboot = reboot.Syscall{}
			if noReboot {
				o.Reboot = reboot.Func(func(context.Context, string) error {
					fmt.Fprintln(cmd.OutOrStdout(), "factory run finished: not rebooting (--no-reboot)")
					return nil
				})
			}
			return factory.Run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.StationURL, "station", "", "station URL (default: lekiwi.station= on the kernel command line)")
	f.StringVar(&o.Token, "token", "", "board token (default: lekiwi.token= on the kernel command line)")
	f.StringVar(&procRoot, "proc", "/proc", "procfs root")
	f.StringVar(&sysRoot, "sys", "/sys", "sysfs root")
	f.StringVar(&devRoot, "dev", "/dev", "device directory (serial ports, and the disk to install onto)")
	f.BoolVar(&noReboot, "no-reboot", false, "do not reboot at the end")
	return cmd
}

func newFactoryProbeCmd() *cobra.Command {
	var (
		asJSON                     bool
		procRoot, sysRoot, devRoot string
		pingTimeout                time.Duration
	)
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Probe the board and its servo buses, and say which robot profile fits",
		Long: `Probe reads the board's revision code, serial, memory, storage, USB devices,
cameras and serial ports from /proc and /sys, pings servo IDs 1-9 on every
USB serial port (Feetech STS protocol, 1 Mbaud), and matches the servo buses
against the embedded profiles: LeKiwi has one bus answering IDs 1-9, XLE two
buses answering 1-8 and 1-9; a bus answering only 1-6 is a leader arm and
does not count. When nothing fits it says why, naming the port.

--json prints the hardware report the netboot station receives.`,
		Example: `  agent factory probe
  agent factory probe --json > report.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := factory.Probe(cmd.Context(), factory.Options{ProcRoot: procRoot, SysRoot: sysRoot, DevRoot: devRoot, PingTimeout: pingTimeout})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			m, err := profiles.MatchEmbedded(observedBuses(r.ServoBuses))
			if err != nil {
				return err
			}
			return printReport(out, r, m)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print the hardware report as JSON")
	f.StringVar(&procRoot, "proc", "/proc", "procfs root")
	f.StringVar(&sysRoot, "sys", "/sys", "sysfs root")
	f.StringVar(&devRoot, "dev", "/dev", "device directory the serial ports are opened in")
	f.DurationVar(&pingTimeout, "ping-timeout", 0, "how long to wait for each servo's answer (0: 10ms)")
	return cmd
}

func observedBuses(bs []protocol.ServoBus) []profiles.ObservedBus {
	out := make([]profiles.ObservedBus, len(bs))
	for i, b := range bs {
		out[i] = profiles.ObservedBus{Device: b.Device, IDs: b.IDs, Garbled: b.Garbled, Error: b.Error}
	}
	return out
}

func printReport(w io.Writer, r *protocol.HardwareReport, m profiles.Match) error {
	var b strings.Builder
	line := func(label, format string, args ...any) {
		fmt.Fprintf(&b, "%-10s "+format+"\n", append([]any{label}, args...)...)
	}
	bd := r.Board
	line("board", "%s (revision %s: type %s rev %s, %dMB, %s, %s), serial %s", bd.Model, bd.Revision, bd.Type, bd.BoardRevision, bd.MemoryMB, bd.Manufacturer, bd.Processor, bd.Serial)
	line("memory", "%.1f GiB", float64(r.MemoryBytes)/(1<<30))
	for _, s := range r.Storage {
		extra := ""
		if s.Removable {
			extra = " removable"
		}
		line("storage", "%s %s %.1f GB%s %s", s.Name, s.Kind, float64(s.SizeBytes)/1e9, extra, s.Model)
	}
	for _, u := range r.USB {
		line("usb", "%s %s:%s %s %s %s", u.Path, u.Vendor, u.Product, u.Name, u.Class, u.Serial)
	}
	for _, v := range r.Video {
		line("video", "%s %s %s", v.Device, v.Name, v.USB)
	}
	for _, s := range r.SerialPorts {
		line("serial", "%s usb %s %s:%s", s.Device, s.USB, s.Vendor, s.Product)
	}
	for _, sb := range r.ServoBuses {
		switch {
		case sb.Error != "":
			line("servo bus", "%s: %s", sb.Device, sb.Error)
		case len(sb.Garbled) > 0:
			line("servo bus", "%s: IDs %v answered, %v garbled", sb.Device, sb.IDs, sb.Garbled)
		default:
			line("servo bus", "%s: IDs %v answered", sb.Device, sb.IDs)
		}
	}
	for _, warn := range r.Warnings {
		line("warning", "%s", warn)
	}
	if m.Held() {
		line("profile", "none (held): %s", m.Reason)
	} else {
		line("profile", "%s", m.Profile.Name)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
