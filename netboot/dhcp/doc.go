// Package dhcp is the netboot station's DHCP server: proxyDHCP for Raspberry
// Pis by default (the factory's own DHCP server keeps handing out
// addresses; we only add the PXE options a Pi bootloader needs), or a full
// DHCP server with an address pool and leases persisted across restarts.
// Every client it hears, Pi or not, is reported once as a DeviceSeen
// (snooping), through a bounded queue that never slows the DHCP path.
package dhcp
