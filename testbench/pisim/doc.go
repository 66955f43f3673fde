// Package pisim simulates the network boot of a Raspberry Pi 4 or 5 EEPROM
// bootloader against a netboot station, for tests and the testbench: the
// DHCP exchange exactly as the bootloader sends it (from 0.0.0.0:68 to the
// broadcast address, with its vendor class, option 93/94/97 and parameter
// request list; waiting until it holds both an address offer and an offer
// carrying the "Raspberry Pi Boot" PXE menu, then REQUEST/ACK with the
// address server), then the TFTP file sequence of that model from the
// "<serial>/" directory, each file preceded by the bootloader's tsize probe
// and "early terminate" (netboot/tftp/tftptest), with config.txt read
// minimally to decide the kernel, device tree and initramfs names.
//
// A Fleet shares one DHCP client socket pair among many simulated Pis in
// one network namespace (port 68 can be bound once per namespace) and
// demultiplexes the replies by transaction ID and client hardware address.
//
// Sources for what the bootloader sends and fetches (stored copies of
// public material, read 2026):
//   - DHCP DISCOVER: raspberrypi/rpi-eeprom issue 69 (Pi 4 Wireshark
//     capture: option 55 is 1, 3, 43, 60, 66, 67, 128-135, 14 items) and
//     raspberrypi/firmware issue 871 (tcpdump: option 93 = 0, option 94 =
//     1.2.1, option 97, option 60 PXEClient:Arch:00000:UNDI:002001; sent from
//     0.0.0.0.68 to 255.255.255.255.67, flags none); rpi-eeprom issue 82 (the
//     REQUEST carries no option 60); raspberrypi/documentation
//     bcm2711-bootloader (option 97 FourCC layout, DHCP_REQ_TIMEOUT 4 s).
//   - Offer handling: rpi-eeprom issues 376 and 687 (Pi 4 and Pi 5 UART
//     logs: the bootloader receives the proxy OFFER with option 43 and the
//     network's OFFER with YI_ADDR, prints "NET <ip> <mask> gw tftp <proxy
//     server id>", then REQUEST → ACK with the address server).
//   - Pi 4 TFTP order: rpi-eeprom issue 74 (tcpdump: "<serial>/start4.elf"
//     probed first to choose the prefix, then config.txt, recover4.elf,
//     start4.elf; every RRQ with tsize 0 and blksize), rpi-eeprom issue 87
//     (server log: config.txt, start4.elf, fixup4.dat, config.txt again,
//     initramfs, dtb, overlays, cmdline.txt, kernel) and the
//     documentation's TFTP_PREFIX ("if neither start4.elf nor start.elf are
//     found in the prefixed directory then the prefix is cleared").
//   - Pi 5: tinkerbell/tinkerbell docs/technical/RASPBERRY_PI5.md (no
//     start4.elf, the firmware is in the EEPROM; "<serial>/config.txt" first,
//     pieeprom.sig probed for self-update, then device tree, cmdline.txt,
//     kernel8.img/kernel_2712.img and initramfs; the prefix is dropped when
//     the prefixed directory does not look bootable), and
//     Hexxeh/rpi-firmware issue 269 (the firmware probes the default kernel
//     names in turn with "early terminate").
//
// Linux only: DHCP frames are sent on an AF_PACKET socket so that their
// source is 0.0.0.0 and the Pi's own MAC, whatever addresses the
// interface has.
package pisim
