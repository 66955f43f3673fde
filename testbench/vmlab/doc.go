// Package vmlab boots real arm64 Linux in QEMU (TCG: no KVM needed) on a
// machine shaped like a robot's Raspberry Pi, for tests of what runs on
// the board: the provisioning initramfs, the agent's factory run, first
// boot. A VM is QEMU's "virt" machine with
//
//   - the kernel, initramfs and command line the caller gives (the lab
//     plays the Pi firmware: testbench/vmlab/piboot picks them from a
//     netboot station or from a disk image, as a Pi would);
//   - QEMU's own device tree with a Pi's /model, /serial-number,
//     /system/linux,revision and /chosen/bootloader properties added
//     (DeviceTree), so the agent's probe reads a Pi's identity;
//   - an NVMe drive on a raw image file (Disk), the install target;
//   - a virtio-net port with a Pi's MAC on a tap attached to a bridge in
//     a network namespace (NIC, Net), where QEMU runs;
//   - one USB serial adapter per servo bus (QEMU's usb-serial, an FTDI
//     FT232 to the guest's ftdi_sio) whose byte stream the lab hands to a
//     servo.Sim answering pings for the bus's IDs (ServoBus);
//   - the serial console (ttyAMA0) logged to Dir/console.log and read
//     line by line (Console.WaitFor).
//
// Start/StartTest run one VM; Close (and a per-VM timeout) kills QEMU's
// process group and removes its tap and sockets.
//
// What it is not: a Pi. There is no VideoCore, no Pi device tree (QEMU
// generates a virt one: PL011 UART, PCIe, GICv2), no SD card or eMMC, no
// GPIO, no EEPROM, and the Pi firmware is emulated only as far as choosing
// the files to boot. Under TCG a guest runs many times slower than a Pi, and
// timing-sensitive code (servo ping timeouts) sees QEMU's USB emulation
// latency (10-50 ms measured), not a real FT232's.
//
// Everything needs root for namespaces and taps; QEMU
// (qemu-system-aarch64, Debian qemu-system-arm) and dtc (Debian
// device-tree-compiler) must be installed. Kernel and initramfs fixtures
// come from testbench/vmlab/fixture.
package vmlab
