package firmware

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/agent/bootctl/rpi"
)

// PiOptions configure a modelled Pi.
type PiOptions struct {
	Options
	// DeviceTree, if set, receives /chosen/bootloader/{tryboot,partition}
	// after each boot, as /proc/device-tree does on a Pi, so an
	// rpi.Controller can run against the model.
	DeviceTree string
	// Watchdog is the hardware watchdog timeout the booted system enables
	// (systemd RuntimeWatchdogSec); 0 models no watchdog.
	Watchdog time.Duration
}

// Pi is a Raspberry Pi with a disk: a one-shot tryboot flag, a watchdog,
// and the firmware's boot selection. Time passes only through Advance.
type Pi struct {
	mu       sync.Mutex
	disk     io.ReaderAt
	size     int64
	o        PiOptions
	tryFlag  bool
	running  *Boot
	now      time.Duration
	lastKick time.Duration
	boots    []Boot
}

// NewPi makes a powered-off Pi with the disk.
// NewControlledPi is a Pi booting disk (size bytes) with the device tree at
// dt and a one-minute watchdog, and the agent's rpi.Controller for it on
// bootConfig (the disk's bootconfig partition): the pair an update runs
// against.
func NewControlledPi(disk io.ReaderAt, size int64, bootConfig rpi.Device, dt string) (*Pi, *rpi.Controller, error) {
	pi := NewPi(disk, size, PiOptions{DeviceTree: dt, Watchdog: time.Minute})
	ctl, err := rpi.New(rpi.Options{DeviceTree: dt, BootConfig: bootConfig, Reboot: pi})
	if err != nil {
		return nil, nil, err
	}
	return pi, ctl, nil
}

func NewPi(disk io.ReaderAt, size int64, o PiOptions) *Pi {
	return &Pi{disk: disk, size: size, o: o}
}

// Reboot is what the kernel's reboot(RESTART2, arg) does on a Pi: "0
// tryboot" sets the one-shot flag (the leading number is a partition
// override, 0 meaning "use autoboot.txt"; others are not modelled). The
// system stops; Boot brings it up again. A Pi is the reboot.Rebooter of
// its rpi.Controller.
func (p *Pi) Reboot(ctx context.Context, arg string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	flag := false
	for i, f := range strings.Fields(arg) {
		if i == 0 {
			if n, err := strconv.Atoi(f); err == nil {
				if n != 0 {
					return fmt.Errorf("reboot %q: a partition override is not modelled", arg)
				}
				continue
			}
		}
		if f == "tryboot" {
			flag = true
		} else {
			return fmt.Errorf("reboot %q: argument %q is not modelled", arg, f)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tryFlag = flag
	p.running = nil
	return nil
}

// PowerCut removes power: the flag register is lost, the system stops.
func (p *Pi) PowerCut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tryFlag = false
	p.running = nil
}

// Boot powers on (or resets) the Pi: the firmware reads and clears the
// tryboot flag, then selects and checks a slot.
func (p *Pi) Boot() (Boot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bootLocked()
}

func (p *Pi) bootLocked() (Boot, error) {
	flag := p.tryFlag
	p.tryFlag = false
	p.running = nil
	b, err := Select(p.disk, p.size, flag, p.o.Options)
	if err != nil {
		return Boot{}, err
	}
	if p.o.DeviceTree != "" {
		if err := rpi.WriteBootInfo(p.o.DeviceTree, rpi.BootInfo{Tryboot: b.Trial, Partition: b.Partition}); err != nil {
			return Boot{}, err
		}
	}
	b.ID = rand.Text()
	p.running = &b
	p.lastKick = p.now
	p.boots = append(p.boots, b)
	return b, nil
}

// Kick is the running system feeding the watchdog.
func (p *Pi) Kick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lastKick = p.now
}

// Advance lets d pass. When the running system has not kicked the watchdog
// for its timeout, the watchdog resets the Pi, which boots again (with the
// tryboot flag long cleared); reset reports that, b is the new boot.
func (p *Pi) Advance(d time.Duration) (reset bool, b Boot, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.now += d
	if p.running == nil || p.o.Watchdog <= 0 || p.now-p.lastKick < p.o.Watchdog {
		return false, Boot{}, nil
	}
	b, err = p.bootLocked()
	if err == nil {
		b.Reason = "watchdog reset, " + b.Reason
		p.running.Reason = b.Reason
		p.boots[len(p.boots)-1].Reason = b.Reason
	}
	return true, b, err
}

// Running is the boot currently running, if any.
func (p *Pi) Running() (Boot, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running == nil {
		return Boot{}, false
	}
	return *p.running, true
}

// Boots lists every successful boot so far.
func (p *Pi) Boots() []Boot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Boot(nil), p.boots...)
}
