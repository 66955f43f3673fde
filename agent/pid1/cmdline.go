package pid1

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/agent/factory"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/protocol"
)

// Mode is what the kernel command line asks the init to do.
type Mode int

const (
	// Factory provisions the board over the network (lekiwi.station=).
	Factory Mode = iota + 1
	// Root boots the robot's own disk (root=PARTUUID=).
	Root
)

func (m Mode) String() string {
	switch m {
	case Factory:
		return "factory"
	case Root:
		return "root"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// Defaults of the disk boot, as the kernel's own root= handling has them
// (but for the delay: the kernel waits forever with rootwait, not at all
// without; the init always keeps looking, and says so after the delay).
const (
	DefaultRootFSType = "ext4"
	DefaultRootDelay  = 30 * time.Second
	DefaultInit       = "/sbin/init"
)

// Boot is what the kernel command line tells the init.
type Boot struct {
	Mode Mode

	// Factory: the station and the board's token.
	StationURL, Token string

	// Root: the partition to boot and how to mount it.
	RootPARTUUID layout.GUID
	RootFSType   string        // rootfstype=, default DefaultRootFSType
	RootFlags    string        // rootflags=, the filesystem's mount options
	ReadOnly     bool          // ro (the kernel's default) unless rw comes last
	RootDelay    time.Duration // rootdelay= seconds, default DefaultRootDelay
	Init         string        // init=, default DefaultInit
}

// ParseCmdline reads a kernel command line (/proc/cmdline). Arguments
// after "--" are init's own and are not read. A command line asking for
// neither mode, or for a root the init cannot find (anything but a GPT
// PARTUUID), is an error saying what to put in cmdline.txt.
func ParseCmdline(cmdline string) (Boot, error) {
	b := Boot{RootFSType: DefaultRootFSType, ReadOnly: true, RootDelay: DefaultRootDelay, Init: DefaultInit}
	args := map[string]string{}
	for _, w := range factory.KernelWords(cmdline) {
		if w == "--" {
			break
		}
		k, v, _ := strings.Cut(w, "=")
		args[k] = v
		switch w {
		case "ro":
			b.ReadOnly = true
		case "rw":
			b.ReadOnly = false
		}
	}
	if v := args["rootfstype"]; v != "" {
		b.RootFSType = v
	}
	b.RootFlags = args["rootflags"]
	if v := args["init"]; v != "" {
		if !strings.HasPrefix(v, "/") {
			return b, fmt.Errorf("init=%s: want an absolute path in the root filesystem, like %s", v, DefaultInit)
		}
		b.Init = v
	}
	if v, ok := args["rootdelay"]; ok {
		s, err := strconv.Atoi(v)
		if err != nil || s < 0 {
			return b, fmt.Errorf("rootdelay=%s: want a whole number of seconds", v)
		}
		b.RootDelay = time.Duration(s) * time.Second
	}

	station, token := args[protocol.KernelArgStation], args[protocol.KernelArgToken]
	root, hasRoot := args["root"]
	switch {
	case station != "":
		if token == "" {
			return b, fmt.Errorf("%s=%s but no %s=: the netboot station writes both into cmdline.txt; check the station's kernel arguments", protocol.KernelArgStation, station, protocol.KernelArgToken)
		}
		b.Mode, b.StationURL, b.Token = Factory, station, token
		return b, nil
	case hasRoot:
		g, err := parseRoot(root)
		if err != nil {
			return b, err
		}
		b.Mode, b.RootPARTUUID = Root, g
		return b, nil
	}
	return b, errors.New("the kernel command line has neither " + protocol.KernelArgStation + "= (factory provisioning, from the netboot station) " +
		"nor root=PARTUUID= (the robot's disk): fix cmdline.txt on the boot partition, or the station's kernel arguments")
}

// parseRoot accepts root=PARTUUID=<GPT partition GUID>, which is what
// image/layout writes into every slot's cmdline.txt.
func parseRoot(root string) (layout.GUID, error) {
	v, ok := strings.CutPrefix(root, "PARTUUID=")
	if !ok {
		return layout.GUID{}, fmt.Errorf("root=%s: this initramfs finds its root by GPT partition GUID only: write root=PARTUUID=<guid> into cmdline.txt (`provision image inspect` shows the slots' GUIDs)", root)
	}
	if len(v) == 11 && v[8] == '-' {
		return layout.GUID{}, fmt.Errorf("root=PARTUUID=%s is an MBR disk's partition id: the Lekiwi layout is GPT; write the system partition's GUID (`provision image inspect`)", v)
	}
	g, err := layout.ParseGUID(strings.ToLower(v))
	if err != nil {
		return layout.GUID{}, fmt.Errorf("root=PARTUUID=%s: %w", v, err)
	}
	return g, nil
}
