// Package piboot plays the Raspberry Pi 4/5 firmware for the VM lab: it
// decides, as a Pi would, which kernel, initramfs and command line to boot,
// and loads them, so that testbench/vmlab can start QEMU with them.
//
//   - FromNetwork takes the network path exactly as the Pi bootloader does
//     (testbench/pisim: DHCP with the Pi's options and MAC, then its TFTP
//     sequence from the station) and keeps the files it received.
//   - FromDisk reads a disk image as the firmware reads its boot device:
//     GPT, partition 1's autoboot.txt ([all]/[tryboot], boot_partition),
//     the chosen partition's config.txt and cmdline.txt — with sfdisk and
//     mtools, independently of the project's own partition and FAT code
//     and of its firmware model (agent/bootctl/bootctltest/firmware), so
//     that the lab checks them rather than agreeing with them.
//
// config.txt and autoboot.txt are read strictly (ParseConfig,
// ParseAutoboot): what the lab does not model is an error, not a guess.
// The result, Boot, says what was chosen so tests can assert it, and gives
// the /chosen/bootloader properties for the VM's device tree.
//
// Not modelled: the Pi's own device tree and overlays (the VM boots QEMU's
// virt tree), the arguments the firmware prepends to the command line,
// load addresses, os_prefix and include, boot_partition=0, and any
// bootloader state beyond the tryboot flag.
package piboot
