package pisim

import (
	"bufio"
	"strings"
)

// BootConfig is what the simulated firmware takes from config.txt: just
// enough to know which files to fetch next.
type BootConfig struct {
	Kernel        string   // kernel=; "" means the model's default names
	Initramfs     []string // initramfs NAME[,NAME…] [followkernel|ADDRESS], or ramfsfile=
	AutoInitramfs bool     // auto_initramfs=1: initramfs named after the kernel, if present
	DeviceTree    string   // device_tree=; "" means the board's default
	Cmdline       string   // cmdline=; default cmdline.txt
}

// ParseConfigTxt reads the config.txt keys the simulated firmware acts on,
// for a Pi of the given model (4 or 5). Conditional sections: [all] and
// [pi4]/[pi5] apply as the firmware does, [none] never applies, and every
// other filter ([cm4], [gpio4=1], [tryboot], EDID, board-type…) is treated
// as not matching: the simulation has no GPIOs, HDMI or tryboot flag.
// "include" lines are ignored. Later settings override earlier ones. It
// never fails: the firmware ignores what it does not understand.
func ParseConfigTxt(text string, model int) BootConfig {
	var c BootConfig
	active := true
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "[") {
			filter := strings.ToLower(strings.TrimSpace(strings.Trim(line, "[]")))
			switch filter {
			case "all":
				active = true
			case "pi4":
				active = model == 4
			case "pi5":
				active = model == 5
			default:
				active = false
			}
			continue
		}
		if !active {
			continue
		}
		// "initramfs" is the one directive written with a space, not "=".
		if f := strings.Fields(line); len(f) >= 2 && strings.EqualFold(f[0], "initramfs") && !strings.Contains(f[0], "=") {
			c.Initramfs = splitList(f[1])
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key, value = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(value)
		switch key {
		case "kernel":
			c.Kernel = value
		case "ramfsfile":
			c.Initramfs = splitList(value)
		case "auto_initramfs":
			c.AutoInitramfs = value == "1"
		case "device_tree":
			c.DeviceTree = value
		case "cmdline":
			c.Cmdline = value
		}
	}
	return c
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
