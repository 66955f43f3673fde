// Package pi knows the Raspberry Pi network boot protocol as seen from the
// DHCP server: how a Pi's bootloader identifies itself (vendor class, option
// 97 client GUID, MAC OUI) and what it needs to hear back (option 43 PXE
// vendor sub-options with the "Raspberry Pi Boot" menu entry). The board
// revision and serial it carries are decoded by package raspberrypi.
//
// It has no I/O: netboot/dhcp and netboot/tftp use it to decide and to build.
package pi
