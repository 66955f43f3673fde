package piboot

import (
	"context"
	"errors"
	"fmt"

	"github.com/lekiwi/heartbeat/testbench/pisim"
)

// NetworkOptions are the board and the boot for FromNetwork.
type NetworkOptions struct {
	// Pi is the board as the bootloader presents it on the network: its
	// generation (4 or 5), MAC (the VM's NIC), serial and revision.
	Pi pisim.Pi
	// Sim says where the bootloader's DHCP and TFTP run: the interface
	// and namespace on the VM's LAN. KeepContent is set by FromNetwork.
	Sim pisim.Config
	// Dir receives the loaded kernel and initramfs. Required.
	Dir string
	// UART is the kernel name serial0 becomes; default DefaultUART.
	UART string
}

// FromNetwork boots over the network exactly as a Pi's bootloader does,
// through testbench/pisim: its DHCP exchange (with the Pi's options and
// the board's MAC) and its TFTP file sequence from the station. The
// config.txt it fetched is then read with ParseConfig (the lab's one
// reading of config.txt; pisim's own lenient reading only drives which
// files it fetches) and the kernel, initramfs and cmdline.txt it names are
// taken from what was transferred. The device tree the Pi would load is
// fetched but not used: the VM boots QEMU's. It returns pisim's Result too,
// for the exchange's details.
func FromNetwork(ctx context.Context, o NetworkOptions) (Boot, pisim.Result, error) {
	b := Boot{Source: Network, ConfigFile: "config.txt"}
	if o.Dir == "" {
		return b, pisim.Result{}, errors.New("piboot: NetworkOptions.Dir is required")
	}
	if o.UART == "" {
		o.UART = DefaultUART
	}
	cfg := o.Sim
	cfg.KeepContent = true
	res, err := pisim.Boot(ctx, cfg, o.Pi)
	if err != nil {
		return b, res, err
	}
	fetched := map[string][]byte{}
	for _, f := range res.Fetched() {
		fetched[f.Name[len(res.Prefix):]] = f.Content
	}
	conf, ok := fetched["config.txt"]
	if !ok {
		return b, res, fmt.Errorf("piboot: the station served %s no config.txt", o.Pi)
	}
	if b.Config, err = ParseConfig(string(conf), Board{Revision: o.Pi.Revision, Serial: o.Pi.Serial}); err != nil {
		return b, res, fmt.Errorf("%w (config.txt from the station)", err)
	}
	c := b.Config
	take := func(name string) ([]byte, error) {
		data, ok := fetched[name]
		if !ok {
			return nil, fmt.Errorf("piboot: config.txt names %q, which the simulated bootloader did not fetch (pisim and piboot read config.txt differently?); fetched: %v", name, fileNames(res))
		}
		return data, nil
	}
	b.KernelName = c.Kernel
	if b.KernelName == "" {
		for _, k := range defaultKernels(o.Pi.Model) {
			if _, ok := fetched[k]; ok {
				b.KernelName = k
				break
			}
		}
	}
	kernel, err := take(b.KernelName)
	if err != nil {
		return b, res, err
	}
	b.InitramfsNames = c.Initramfs
	if len(b.InitramfsNames) == 0 && c.AutoInitramfs {
		if name, ok := autoInitramfs(b.KernelName); ok {
			if _, ok := fetched[name]; ok {
				b.InitramfsNames = []string{name}
			}
		}
	}
	var initramfs [][]byte
	for _, name := range b.InitramfsNames {
		data, err := take(name)
		if err != nil {
			return b, res, err
		}
		initramfs = append(initramfs, data)
	}
	cmdlineName := c.Cmdline
	if cmdlineName == "" {
		cmdlineName = "cmdline.txt"
	}
	if text, ok := fetched[cmdlineName]; ok {
		if b.Cmdline, err = kernelCmdline(string(text), o.UART); err != nil {
			return b, res, err
		}
	}
	return b, res, writeLoaded(o.Dir, &b, kernel, initramfs)
}

func fileNames(r pisim.Result) []string {
	var out []string
	for _, f := range r.Fetched() {
		out = append(out, f.Name)
	}
	return out
}
