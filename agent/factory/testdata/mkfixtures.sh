#!/bin/sh
# Regenerates the sysfs/procfs fixture trees the probe tests read. The
# layout copies a real Raspberry Pi's: /sys/class/* entries are relative
# symlinks into /sys/devices, USB devices sit under their host controller
# with their interfaces, tty and video4linux nodes below an interface.
# Run from this directory: sh mkfixtures.sh
set -eu

f() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" > "$1"; }
# dt FILE TEXT: a device-tree string property (NUL-terminated, no newline)
dt() { mkdir -p "$(dirname "$1")"; printf '%s\0' "$2" > "$1"; }
# link ROOT CLASSPATH TARGET (TARGET relative to ROOT/sys)
link() {
	root=$1; cls=$2; target=$3
	mkdir -p "$root/sys/$(dirname "$cls")"
	up=$(dirname "$cls" | sed 's|[^/][^/]*|..|g')
	ln -sfn "$up/$target" "$root/sys/$cls"
}
# usbdev ROOT DEVPATH VID PID PRODUCT MANUFACTURER SERIAL
usbdev() {
	d=$1/sys/$2
	f "$d/idVendor" "$3"; f "$d/idProduct" "$4"
	[ -n "$5" ] && f "$d/product" "$5"
	[ -n "$6" ] && f "$d/manufacturer" "$6"
	[ -n "$7" ] && f "$d/serial" "$7"
	link "$1" "bus/usb/devices/$(basename "$2")" "$2"
}
# usbif ROOT IFPATH CLASS
usbif() { f "$1/sys/$2/bInterfaceClass" "$3"; link "$1" "bus/usb/devices/$(basename "$2")" "$2"; }
# disk ROOT DEVPATH NAME SECTORS REMOVABLE
disk() {
	d=$1/sys/$2/block/$3
	f "$d/size" "$4"; f "$d/removable" "$5"
	ln -sfn ../.. "$d/device"
	link "$1" "class/block/$3" "$2/block/$3"
}
part() { f "$1/sys/$2/block/$3/$4/partition" "${4##*p}"; f "$1/sys/$2/block/$3/$4/size" 1048576; link "$1" "class/block/$4" "$2/block/$3/$4"; }
tty() { f "$1/sys/$2/$3/dev" "166:0"; link "$1" "class/tty/$(basename "$3")" "$2/$3"; mkdir -p "$1/dev"; : > "$1/dev/$(basename "$3")"; }
video() { f "$1/sys/$2/video4linux/$3/name" "$4"; link "$1" "class/video4linux/$3" "$2/video4linux/$3"; }

pi5() { # ROOT REVISION SERIAL
	r=$1
	f "$r/proc/cpuinfo" "processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
CPU part	: 0xd0b

Revision	: $2
Serial		: $3
Model		: Raspberry Pi 5 Model B Rev 1.0"
	dt "$r/proc/device-tree/model" "Raspberry Pi 5 Model B Rev 1.0"
	dt "$r/proc/device-tree/serial-number" "$3"
	f "$r/proc/meminfo" "MemTotal:        8245952 kB
MemFree:         7807872 kB
MemAvailable:    7937744 kB"
	# SD card slot, 64 GB card (SDXC), one partition; the kernel's zram.
	sd=devices/platform/axi/1000fff000.mmc/mmc_host/mmc0/mmc0:aaaa
	f "$r/sys/$sd/type" SD; f "$r/sys/$sd/name" SN64G
	disk "$r" "$sd" mmcblk0 124735488 0
	part "$r" "$sd" mmcblk0 mmcblk0p1
	f "$r/sys/devices/virtual/block/zram0/size" 4194304
	link "$r" class/block/zram0 devices/virtual/block/zram0
	# Pi 5 ISP and HEVC decoder video nodes, not on USB.
	video "$r" devices/platform/axi/1000880000.pisp_be video20 pispbe-input
	video "$r" devices/platform/axi/1000800000.codec video19 rpi-hevc-dec
	# Root hub: not a device anyone plugged in.
	usbdev "$r" devices/platform/axi/1000120000.pcie/1f00200000.usb/xhci-hcd.0/usb1 1d6b 0002 "xHCI Host Controller" "Linux 6.6.51+rpt-rpi-2712 xhci-hcd" xhci-hcd.0
}
HC=devices/platform/axi/1000120000.pcie/1f00200000.usb/xhci-hcd.0/usb1
ch343() { # ROOT PORT SERIAL TTY
	usbdev "$1" "$HC/$2" 1a86 55d3 "USB Single Serial" "" "$3"
	usbif "$1" "$HC/$2/$2:1.0" 02
	usbif "$1" "$HC/$2/$2:1.1" 0a
	tty "$1" "$HC/$2/$2:1.0" "tty/$4"
}
camera() { # ROOT PORT NAME VIDEO
	usbdev "$1" "$HC/$2" 0c45 6366 "$3" "" ""
	usbif "$1" "$HC/$2/$2:1.0" 0e
	usbif "$1" "$HC/$2/$2:1.1" 0e
	video "$1" "$HC/$2/$2:1.0" "$4" "$3: $3"
	video "$1" "$HC/$2/$2:1.0" "video$((${4#video} + 1))" "$3: $3"
}

rm -rf lekiwi-pi5 xle-pi5 bare-pi4 ftdi-pi5 qemu-virt

# LeKiwi: Pi 5 8GB, one servo adapter (IDs 1-9 in the test's simulator),
# front and wrist cameras.
pi5 lekiwi-pi5 d04170 10000000a1b2c3d4
ch343 lekiwi-pi5 1-1 5A46083073 ttyACM0
camera lekiwi-pi5 1-2 "USB 2.0 Camera" video0
camera lekiwi-pi5 1-3 "USB 2.0 Camera" video2

# XLE: Pi 5 16GB (rev 1.1) booting from NVMe, two servo adapters, a head
# camera, and a leader arm's adapter (IDs 1-6) on a CH340 as ttyUSB0.
pi5 xle-pi5 e04171 10000000deadbeef
nv=devices/platform/axi/1000110000.pcie/pci0001:00/0001:00:00.0/0001:01:00.0/nvme/nvme0
f xle-pi5/sys/$nv/model "Samsung SSD 980 500GB"
disk xle-pi5 "$nv" nvme0n1 976773168 0
part xle-pi5 "$nv" nvme0n1 nvme0n1p1
ch343 xle-pi5 1-1 5A46083071 ttyACM0
ch343 xle-pi5 1-2 5A46083072 ttyACM1
camera xle-pi5 1-3 "Intel(R) RealSense(TM) Depth Camera 435" video0
usbdev xle-pi5 "$HC/1-4" 1a86 7523 "USB Serial" "" ""
usbif xle-pi5 "$HC/1-4/1-4:1.0" ff
tty xle-pi5 "$HC/1-4/1-4:1.0" ttyUSB0/tty/ttyUSB0

# Bare Pi 4 4GB: no device tree serial (old firmware), cpuinfo only; a
# 32 GB SD card, a USB stick, nothing else.
r=bare-pi4
f $r/proc/cpuinfo "processor	: 0
model name	: ARMv7 Processor rev 3 (v7l)

Hardware	: BCM2835
Revision	: c03112
Serial		: 100000001234abcd
Model		: Raspberry Pi 4 Model B Rev 1.2"
f $r/proc/meminfo "MemTotal:        3884324 kB"
sd=devices/platform/emmc2bus/fe340000.mmc/mmc_host/mmc0/mmc0:59b4
f $r/sys/$sd/type SD
disk $r "$sd" mmcblk0 62333952 0
part $r "$sd" mmcblk0 mmcblk0p1
part $r "$sd" mmcblk0 mmcblk0p2
us=devices/platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0
f $r/sys/$us/model "Cruzer Blade"
disk $r "$us" sda 30031872 1
usbdev $r devices/platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0/usb2/2-1 0781 5567 "Cruzer Blade" SanDisk 4C530001
usbif $r devices/platform/scb/fd500000.pcie/pci0000:00/0000:00:00.0/0000:01:00.0/usb2/2-1/2-1:1.0 08

# LeKiwi built with an FTDI FT232R adapter (0403:6001) on ttyUSB0, and a
# u-blox GPS receiver (1546:01a8) on ttyACM0 that must not be pinged.
pi5 ftdi-pi5 d04170 10000000f7d1a2b3
usbdev ftdi-pi5 "$HC/1-1" 0403 6001 "FT232R USB UART" FTDI A10KZP45
usbif ftdi-pi5 "$HC/1-1/1-1:1.0" ff
tty ftdi-pi5 "$HC/1-1/1-1:1.0" ttyUSB0/tty/ttyUSB0
usbdev ftdi-pi5 "$HC/1-2" 1546 01a8 "u-blox GNSS receiver" "u-blox AG - www.u-blox.com" ""
usbif ftdi-pi5 "$HC/1-2/1-2:1.0" 02
usbif ftdi-pi5 "$HC/1-2/1-2:1.1" 0a
tty ftdi-pi5 "$HC/1-2/1-2:1.0" tty/ttyACM0

# QEMU 7.2 "virt" (-M virt -cpu cortex-a72 -device qemu-xhci -device
# usb-serial): no board model (the tree's model is linux,dummy-virt, see
# -M virt,dumpdtb=), no revision code, a virtio disk, and QEMU's emulated
# usb-serial, an FTDI FT232 (0403:6001), on ttyUSB0.
r=qemu-virt
f $r/proc/cpuinfo "processor	: 0
BogoMIPS	: 125.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3"
f $r/proc/meminfo "MemTotal:        2014408 kB"
dt $r/sys/firmware/devicetree/base/model "linux,dummy-virt"
dt $r/sys/firmware/devicetree/base/compatible "linux,dummy-virt"
ln -sfn ../sys/firmware/devicetree/base $r/proc/device-tree
vd=devices/platform/a003e00.virtio_mmio/virtio1
disk $r "$vd" vda 16777216 0
part $r "$vd" vda vda1
qx=devices/platform/4010000000.pcie/pci0000:00/0000:00:01.0/usb1
usbdev $r "$qx" 1d6b 0002 "xHCI Host Controller" "Linux 6.1.0-57-arm64 xhci-hcd" 0000:00:01.0
usbdev $r "$qx/1-1" 0403 6001 "QEMU USB SERIAL" QEMU 1-0000:00:01.0-1
usbif $r "$qx/1-1/1-1:1.0" ff
tty $r "$qx/1-1/1-1:1.0" ttyUSB0/tty/ttyUSB0
