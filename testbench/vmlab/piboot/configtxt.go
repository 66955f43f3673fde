package piboot

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"

	"github.com/lekiwi/heartbeat/raspberrypi"
)

// Board is what the firmware knows of the board it runs on, for the
// conditional filters.
type Board struct {
	Revision raspberrypi.Revision
	Serial   raspberrypi.Serial
	Tryboot  bool // the one-shot tryboot flag is set for this boot
}

// Config is what config.txt (or tryboot.txt) says about the files to load.
type Config struct {
	// Kernel is kernel=; "" means the model's default names.
	Kernel string
	// Initramfs are the files of "initramfs NAME[,NAME…] followkernel"
	// or ramfsfile=, loaded back to back.
	Initramfs []string
	// AutoInitramfs is auto_initramfs=1: without an initramfs line, load
	// the initramfs named after the kernel if it exists.
	AutoInitramfs bool
	// Cmdline is cmdline=, the command line's file; default cmdline.txt.
	Cmdline string
	// Ignored are the settings read that do not change what is loaded
	// (dtparam, dtoverlay, enable_uart…), "key=value" in file order.
	Ignored []string
}

// ignoredKeys are settings that configure the hardware or the firmware's
// own behaviour but not which files are loaded or how: the lab reads past
// them. device_tree is among them because the lab boots QEMU's device
// tree, whatever the Pi would load.
var ignoredKeys = map[string]bool{
	"dtparam": true, "dtoverlay": true, "device_tree": true, "enable_uart": true, "uart_2ndstage": true,
	"gpu_mem": true, "camera_auto_detect": true, "display_auto_detect": true, "disable_overscan": true,
	"arm_boost": true, "max_framebuffers": true, "disable_fw_kms_setup": true, "otg_mode": true,
	"disable_splash": true, "boot_delay": true, "dtdebug": true, "avoid_warnings": true, "arm_freq": true,
	"over_voltage": true, "force_turbo": true, "start_x": true, "usb_max_current_enable": true,
	"enable_tvout": true, "pciex4_reset": true,
	"disable_camera_led": true, "temp_limit": true, "initial_turbo": true, "sdram_freq": true,
	"core_freq": true, "gpu_freq": true, "hdmi_force_hotplug": true, "hdmi_group": true, "hdmi_mode": true,
	"hdmi_drive": true, "hdmi_blanking": true, "hdmi_enable_4kp60": true, "config_hdmi_boost": true,
	"framebuffer_width": true, "framebuffer_height": true, "disable_poe_fan": true, "enable_jtag_gpio": true,
}

// refusedKeys change what is loaded or where, in ways the lab does not
// model; a config.txt using them is refused rather than booted wrongly.
var refusedKeys = map[string]string{
	"os_prefix":           "prefixes every file name",
	"overlay_prefix":      "moves the overlays",
	"include":             "reads another file",
	"kernel_address":      "places the kernel",
	"ramfsaddr":           "places the initramfs",
	"initramfs_addr":      "places the initramfs",
	"device_tree_address": "places the device tree",
	"arm_control":         "changes the boot mode",
	"kernel_old":          "loads the kernel at 0",
	"armstub":             "replaces the ARM stub",
	"boot_partition":      "belongs in autoboot.txt",
	"tryboot_a_b":         "belongs in autoboot.txt",
	"upstream_kernel":     "changes device tree names",
}

// ParseConfig reads config.txt as the Pi firmware does for the settings
// that decide what is loaded, on board b. Supported: comments (#), the
// conditional filters [all], [none], [tryboot], the model filters ([pi4],
// [pi400], [cm4], [cm4s], [pi5], [pi500], [cm5], the older [pi0]…[pi3+]),
// [board-type=0xNN] and the serial filter [0x12345678], combined as the
// firmware combines them (a filter replaces one of its own type and is
// ANDed with the others until [all]); the keys of Config, arm_64bit (1
// only), and the harmless keys it lists as Ignored; the last value of a key
// wins. Anything else — another filter ([EDID=…], [gpio4=1], [HDMI:0]),
// a key it does not know, or one it knows it does not model (os_prefix,
// include, load addresses…) — is an error naming the line: the lab refuses
// what it would otherwise guess at.
func ParseConfig(text string, b Board) (Config, error) {
	board, err := b.Revision.Decode()
	if err != nil {
		return Config{}, fmt.Errorf("piboot: board revision %v: %w", b.Revision, err)
	}
	var c Config
	conds := map[string]bool{} // filter type → its last filter's result
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		bad := func(format string, args ...any) (Config, error) {
			return Config{}, fmt.Errorf("piboot: config.txt line %d %q: %s", n, line, fmt.Sprintf(format, args...))
		}
		if strings.HasPrefix(line, "[") {
			if !strings.HasSuffix(line, "]") {
				return bad("unterminated filter")
			}
			filter := strings.ToLower(strings.TrimSpace(line[1 : len(line)-1]))
			if filter == "all" {
				clear(conds)
				continue
			}
			kind, ok, err := evalFilter(filter, board, b)
			if err != nil {
				return bad("%v", err)
			}
			conds[kind] = ok
			continue
		}
		active := true
		for _, ok := range conds {
			active = active && ok
		}
		// "initramfs" is the one directive written with a space.
		if f := strings.Fields(line); strings.EqualFold(f[0], "initramfs") {
			if !active {
				continue
			}
			if len(f) != 3 || !strings.EqualFold(f[2], "followkernel") {
				return bad(`want "initramfs NAME[,NAME…] followkernel": a load address is not modelled`)
			}
			c.Initramfs = splitList(f[1])
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return bad("neither a filter, a key=value nor an initramfs line")
		}
		key, value = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(value)
		if !active {
			continue // not for this board: the firmware skips it too
		}
		if why, refused := refusedKeys[key]; refused {
			return bad("%s %s, which the lab does not model", key, why)
		}
		switch key {
		case "kernel":
			c.Kernel = value
		case "ramfsfile":
			c.Initramfs = splitList(value)
		case "auto_initramfs":
			c.AutoInitramfs = value == "1"
		case "cmdline":
			c.Cmdline = value
		case "arm_64bit":
			if value != "1" {
				return bad("the lab boots 64-bit kernels only")
			}
		default:
			base, _, _ := strings.Cut(key, ":") // hdmi_mode:0=…
			if !ignoredKeys[base] && !strings.HasPrefix(base, "hdmi_") {
				return bad("key %q is unknown to the lab: if it does not change what is loaded, add it to the ignored keys", key)
			}
			c.Ignored = append(c.Ignored, key+"="+value)
		}
	}
	return c, sc.Err()
}

// evalFilter returns a conditional filter's type and whether it matches.
func evalFilter(filter string, board raspberrypi.Board, b Board) (kind string, match bool, err error) {
	model, gen := board.Model, board.Generation()
	switch filter {
	case "none":
		return "none", false, nil
	case "tryboot":
		return "tryboot", b.Tryboot, nil
	case "pi0":
		return "model", model == "Zero" || model == "Zero W" || model == "Zero 2 W", nil
	case "pi0w":
		return "model", model == "Zero W" || model == "Zero 2 W", nil
	case "pi02":
		return "model", model == "Zero 2 W", nil
	case "pi1":
		return "model", gen == 1 && !strings.HasPrefix(model, "Zero"), nil
	case "pi2":
		return "model", model == "2B", nil
	case "pi3":
		return "model", gen == 3 && !strings.HasPrefix(model, "Zero"), nil
	case "pi3+":
		return "model", model == "3B+" || model == "3A+", nil
	case "pi4":
		return "model", gen == 4, nil
	case "pi400":
		return "model", model == "400", nil
	case "cm4":
		return "model", model == "CM4", nil
	case "cm4s":
		return "model", model == "CM4S", nil
	case "pi5":
		return "model", gen == 5, nil
	case "pi500":
		return "model", model == "500", nil
	case "cm5":
		return "model", model == "CM5" || model == "CM5 Lite", nil
	}
	if v, ok := strings.CutPrefix(filter, "board-type="); ok {
		t, err := strconv.ParseUint(strings.TrimPrefix(v, "0x"), 16, 8)
		if err != nil {
			return "", false, fmt.Errorf("board type %q: %w", v, err)
		}
		return "model", b.Revision.NewStyle() && uint64(b.Revision>>4&0xff) == t, nil
	}
	if v, ok := strings.CutPrefix(filter, "0x"); ok && len(v) == 8 {
		s, err := strconv.ParseUint(v, 16, 32)
		if err != nil {
			return "", false, fmt.Errorf("serial filter: %w", err)
		}
		return "serial", raspberrypi.Serial(s) == b.Serial, nil
	}
	return "", false, fmt.Errorf("filter [%s] is not modelled by the lab (no EDID, HDMI or GPIO state to test)", filter)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Autoboot is what autoboot.txt chooses.
type Autoboot struct {
	Partition int  // boot_partition
	TrybootAB bool // tryboot_a_b=1: a tryboot reads config.txt, not tryboot.txt
}

// ParseAutoboot reads autoboot.txt (at most 512 bytes, as the firmware
// reads) for a boot with or without the tryboot flag: the filters [all],
// [none] and [tryboot], the keys boot_partition and tryboot_a_b, the last
// value winning. Anything else is an error. boot_partition=0 (the
// firmware's "first bootable FAT partition") is refused: the lab does not
// guess at which that is.
func ParseAutoboot(text string, tryboot bool) (Autoboot, error) {
	if len(text) > 512 {
		return Autoboot{}, fmt.Errorf("piboot: autoboot.txt is %d bytes; the firmware reads 512", len(text))
	}
	var a Autoboot
	active := true
	for n, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case line == "[all]":
			active = true
		case line == "[none]":
			active = false
		case line == "[tryboot]":
			active = tryboot
		case strings.HasPrefix(line, "["):
			return Autoboot{}, fmt.Errorf("piboot: autoboot.txt line %d %q: autoboot.txt supports only [all], [none] and [tryboot]", n+1, line)
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok {
				return Autoboot{}, fmt.Errorf("piboot: autoboot.txt line %d %q: want key=value", n+1, line)
			}
			if !active {
				continue
			}
			switch strings.TrimSpace(key) {
			case "boot_partition":
				p, err := strconv.Atoi(strings.TrimSpace(value))
				if err != nil || p < 0 {
					return Autoboot{}, fmt.Errorf("piboot: autoboot.txt line %d: boot_partition %q is not a partition number", n+1, value)
				}
				a.Partition = p
			case "tryboot_a_b":
				a.TrybootAB = strings.TrimSpace(value) == "1"
			default:
				return Autoboot{}, fmt.Errorf("piboot: autoboot.txt line %d %q: key unknown to the lab", n+1, line)
			}
		}
	}
	if a.Partition == 0 {
		return Autoboot{}, fmt.Errorf("piboot: autoboot.txt names no boot_partition (or 0, the firmware's default partition, which the lab does not model)")
	}
	return a, nil
}
