// Command netboot is the factory's netboot station: bare Raspberry Pis
// that network-boot on its LAN come out as registered robots. The logic
// lives in netboot/station (and netboot/dhcp, netboot/tftp, ...); this is
// flags around it. It is CGO-free so it cross-compiles to a Pi.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRoot(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "netboot:", err)
		os.Exit(1)
	}
}

// newRoot builds the command tree; output streams are injected so tests
// run it in-process.
func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "netboot",
		Short: "Lekiwi factory netboot station: bare Raspberry Pis in, registered robots out",
		Long: `netboot runs the factory's netboot station. Plug a bare Raspberry Pi into the
factory LAN and power it on: the station answers its network boot (DHCP,
TFTP), boots it into a small provisioning environment, which probes the
hardware and reports it; the station matches a robot profile (LeKiwi: one
servo bus with IDs 1-9; XLE: two buses, 1-8 and 1-9), gets the robot's
identity from control, and the board streams the robot image over HTTP onto
its own NVMe, eMMC or SD card, verifies it and reboots as a robot.

  netboot serve    run the station (DHCP, TFTP, HTTP, events to control)
  netboot status   show the boards a running station knows about
  netboot kit build  write the boot directory serve needs (firmware, kernel,
                   provisioning initramfs) from Debian packages or Pi OS

Prerequisites:
  - each Pi's EEPROM boot order tries the network (BOOT_ORDER with a 2,
    e.g. 0xf21: SD card, then network; set it once with rpi-eeprom-config)
  - the station and the Pis are on the same layer-2 network (DHCP is a
    broadcast): one switch or VLAN, no router in between
  - a node certificate for the station from the fleet CA
    (provision ca issue-node --name station-1)`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newServe(), newStatus(), newKit())
	return root
}
