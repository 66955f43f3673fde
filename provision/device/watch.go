package device

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Watch reports on out every removable disk whose media appears after Watch
// starts — a card pushed into a reader, a USB stick plugged in — once each time
// it appears: disks (with media) present at the start are ignored, a reader
// slot that was empty reports when a card goes in, and a card taken out and put
// back is reported again. It is the `provision flash --watch` bench: a hub of
// card readers, one card after the other.
//
// It polls sysfs every interval (1 s if not positive), which alone is correct.
// When roots.Sys is the real /sys it also listens for the kernel's block
// uevents (NETLINK_KOBJECT_UEVENT) if it may, to look right away instead of at
// the next tick. Each poll opens the device node of every empty removable slot
// (read-only, non-blocking, as udisks does), because many USB card readers
// only notice a new card when someone opens them.
//
// Watch reports what it sees, not whether it is safe: run Check (or Inspect) on
// each Info. It returns ctx.Err() when ctx is done, or an error when sysfs
// cannot be read. Sends on out block until received or ctx is done.
func Watch(ctx context.Context, roots Roots, interval time.Duration, out chan<- Info) error {
	roots = roots.withDefaults()
	var wake <-chan struct{}
	if filepath.Clean(roots.Sys) == "/sys" {
		if u, err := listenUevents(ctx); err == nil {
			wake = u
		} // not allowed or not supported: polling is enough
	}
	return watch(ctx, roots, interval, wake, out)
}

func watch(ctx context.Context, roots Roots, interval time.Duration, wake <-chan struct{}, out chan<- Info) error {
	if interval <= 0 {
		interval = time.Second
	}
	var seen arrivals
	if _, err := seen.scan(roots); err != nil {
		return err
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		case <-wake:
		}
		added, err := seen.scan(roots)
		if err != nil {
			return err
		}
		for _, info := range added {
			select {
			case out <- info:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// arrivals remembers which cards were present at the last scan.
type arrivals struct{ present map[string]Info }

// scan looks at sysfs and returns the cards that were not there at the last
// scan (none at the first), in name order.
func (a *arrivals) scan(roots Roots) ([]Info, error) {
	now, err := scanMedia(roots)
	if err != nil {
		return nil, err
	}
	first := a.present == nil
	var added []Info
	for k, info := range now {
		if _, ok := a.present[k]; !ok && !first {
			added = append(added, info)
		}
	}
	a.present = now
	slices.SortFunc(added, func(x, y Info) int { return strings.Compare(x.Name, y.Name) })
	return added, nil
}

// scanMedia lists the removable whole disks that have media, keyed by what
// changes when a card is swapped: the kernel name, the device number and,
// where the kernel has it (5.15+), the disk sequence number, which counts
// media changes. Empty removable slots are opened to make the kernel check
// for media, for the next scan.
func scanMedia(roots Roots) (map[string]Info, error) {
	dir := filepath.Join(roots.Sys, "class", "block")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list block devices in %s: %w", dir, err)
	}
	out := map[string]Info{}
	for _, e := range entries {
		name := e.Name()
		sys := filepath.Join(dir, name)
		if _, err := os.Stat(filepath.Join(sys, "partition")); err == nil {
			continue
		}
		// Optical drives are removable too (SCSI peripheral type 5).
		if readString(filepath.Join(sys, "device", "type")) == "5" {
			continue
		}
		info, err := Describe(filepath.Join(roots.Dev, name), roots)
		if err != nil || !info.Removable {
			continue // gone while we looked, or not a card
		}
		if info.Size == 0 {
			pokeForMedia(info.Path)
			continue
		}
		key := name + " " + readString(filepath.Join(sys, "dev")) + " " + readString(filepath.Join(sys, "diskseq"))
		out[key] = info
	}
	return out, nil
}

// pokeForMedia opens an empty slot's device node, which makes the kernel ask
// the reader whether a card is in. Errors mean nothing to do.
func pokeForMedia(devPath string) {
	fd, err := unix.Open(devPath, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
}

// listenUevents subscribes to the kernel's uevents and signals (coalesced) on
// the returned channel for each one about a block device, until ctx is done.
func listenUevents(ctx context.Context) (<-chan struct{}, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("open a uevent socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("subscribe to kernel uevents: %w", err)
	}
	// A non-blocking descriptor goes to Go's poller, so Close ends a Read.
	f := os.NewFile(uintptr(fd), "uevent")
	wake := make(chan struct{}, 1)
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			if ev, ok := parseUevent(buf[:n]); ok && ev.Subsystem == "block" {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
	}()
	return wake, nil
}

// uevent is the part of a kernel uevent Watch uses.
type uevent struct {
	Action, DevPath, Subsystem, DevName, DevType string
}

// parseUevent reads a kernel uevent datagram: "ACTION@DEVPATH\0KEY=VALUE\0…".
// Datagrams in udev's own format (starting "libudev") are not kernel events.
func parseUevent(b []byte) (uevent, bool) {
	fields := bytes.Split(b, []byte{0})
	head := string(fields[0])
	at := bytes.IndexByte(fields[0], '@')
	if at <= 0 || at == len(head)-1 {
		return uevent{}, false
	}
	ev := uevent{Action: head[:at], DevPath: head[at+1:]}
	for _, f := range fields[1:] {
		k, v, ok := bytes.Cut(f, []byte("="))
		if !ok {
			continue
		}
		switch string(k) { // ACTION and DEVPATH repeat the head
		case "SUBSYSTEM":
			ev.Subsystem = string(v)
		case "DEVNAME":
			ev.DevName = string(v)
		case "DEVTYPE":
			ev.DevType = string(v)
		}
	}
	return ev, true
}
