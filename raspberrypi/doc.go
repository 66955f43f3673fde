// Package raspberrypi decodes what a Raspberry Pi says about its own
// hardware: the board revision code (as /proc/cpuinfo and the Pi 4/5
// bootloader's DHCP option 97 carry it) into model, memory, maker and
// processor; the board serial in the 32-bit form the bootloader names its
// TFTP directory with; and the MAC address prefixes (OUIs) of Raspberry Pi
// boards. It has no I/O: the agent's factory probe and the netboot station
// both use it, so neither depends on the other.
package raspberrypi
