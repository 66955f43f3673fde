package kit

// DefaultModules is the factory flow's module set, grouped by what it is
// for. A module the kernel lacks entirely (neither a .ko nor built in) is
// a warning, not an error: Debian's and Raspberry Pi OS's kernels build
// different drivers in, and each board needs only some of these.
func DefaultModules() []string {
	var all []string
	for _, g := range ModuleGroups() {
		all = append(all, g.Modules...)
	}
	return all
}

// ModuleGroup is a set of modules with one purpose.
type ModuleGroup struct {
	Purpose string
	Modules []string
}

// ModuleGroups lists the default modules by purpose (for --help and
// kit.json readers).
func ModuleGroups() []ModuleGroup {
	return []ModuleGroup{
		{"storage the image is installed onto: NVMe, the Pi 4's SD/eMMC controller, USB disks",
			[]string{"nvme", "sdhci-iproc", "mmc_block", "usb-storage", "uas", "sd_mod"}},
		// ext4's metadata checksums need the crc32c algorithm, which the
		// kernel asks modprobe for; there is no modprobe in the initramfs.
		// nls_ascii is FAT's default I/O charset in Debian's kernel: without
		// it the installed system's boot partition does not mount (the
		// robot's disk boot uses this initramfs too).
		{"filesystems of the installed system (ext4 root, FAT boot partition)",
			[]string{"ext4", "crc32c_generic", "vfat", "nls_cp437", "nls_iso8859-1", "nls_ascii"}},
		// genet is bcmgenet's module; the Pi 4's PHY sits behind the
		// unimac MDIO bus; macb is the Pi 5's Ethernet (through RP1).
		{"network: the Pi 4's and Pi 5's Ethernet and USB Ethernet adapters",
			[]string{"genet", "broadcom", "mdio-bcm-unimac", "macb", "r8152", "ax88179_178a", "cdc_ether", "usbnet", "asix", "smsc95xx", "lan78xx"}},
		// The Pi 4's USB 3 controller (VL805) is on PCIe and needs its
		// firmware loaded through reset-raspberrypi before xhci-pci binds.
		{"USB host controllers",
			[]string{"xhci-pci", "xhci-plat-hcd", "reset-raspberrypi", "dwc2"}},
		{"USB serial adapters of the servo buses and consoles",
			[]string{"usbserial", "ftdi_sio", "ch341", "cp210x", "cdc-acm"}},
		{"QEMU's virt machine (the lab boots the kit there)",
			[]string{"virtio_pci", "virtio_net", "virtio_blk"}},
	}
}
