// Package pi knows the Raspberry Pi network boot protocol as seen from the
// DHCP server: how a Pi's bootloader identifies itself (vendor class, option
// 97 client GUID, MAC OUI), what it needs to hear back (option 43 PXE vendor
// sub-options with the "Raspberry Pi Boot" menu entry), how to decode its
// board revision code, and how its serial names its TFTP directory.
//
// It has no I/O: netboot/dhcp and netboot/tftp use it to decide and to build.
package pi
