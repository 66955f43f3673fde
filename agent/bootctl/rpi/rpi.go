// Package rpi is the Raspberry Pi 4/5 implementation of bootctl.Controller
// on the Lekiwi A/B layout: the bootloader's device tree properties say
// which partition booted and whether it was a tryboot; autoboot.txt on the
// bootconfig partition ([all] tryboot_a_b=1 boot_partition=N, [tryboot]
// boot_partition=M) says which slot a normal and a trial boot select;
// a reboot with the argument "0 tryboot" sets the firmware's one-shot
// trial flag (the caller's reboot.Rebooter carries it to reboot(2)).
//
// A commit rewrites autoboot.txt in place: the file is padded to one
// sector at build time, every version of it has the same length, and only
// the sector holding its first (only) cluster is written — found through
// the FAT reader, written with O_DIRECT|O_SYNC and flushed. No FAT table or
// directory entry changes, so no FAT repair can ever be needed.
//
// The bootconfig partition must not be mounted while the agent runs: a
// vfat mount would cache the old file and could write its own metadata.
package rpi

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/image/fat"
)

// Device is the bootconfig partition: offsets are within the partition and
// Sync makes completed writes durable.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Size() int64
}

// Options are the controller's roots and hooks.
type Options struct {
	// DeviceTree is the device tree root, /proc/device-tree when empty.
	DeviceTree string
	// BootConfig is the bootconfig partition (see OpenDevice and
	// FindBootDisk). Required.
	BootConfig Device
	// Reboot restarts the machine with a reboot argument ("" or
	// "0 tryboot"). Required, and the caller's choice: reboot.Systemd for
	// the agent service (its seccomp filter has no reboot(2)),
	// reboot.Syscall without a service manager; models pass their own.
	Reboot reboot.Rebooter
}

// Controller implements bootctl.Controller for a Raspberry Pi.
type Controller struct {
	dt     string
	dev    Device
	reboot reboot.Rebooter
}

var _ bootctl.Controller = (*Controller)(nil)

// New makes a controller; it touches nothing until called.
func New(o Options) (*Controller, error) {
	if o.BootConfig == nil {
		return nil, fmt.Errorf("rpi boot control: no bootconfig partition given (see rpi.FindBootDisk)")
	}
	if o.DeviceTree == "" {
		o.DeviceTree = "/proc/device-tree"
	}
	if o.Reboot == nil {
		return nil, fmt.Errorf("rpi boot control: no way to reboot given (reboot.Systemd under systemd, reboot.Syscall without a service manager)")
	}
	return &Controller{dt: o.DeviceTree, dev: o.BootConfig, reboot: o.Reboot}, nil
}

// readAutoboot opens the bootconfig FAT and reads autoboot.txt.
func (c *Controller) readAutoboot() (*fat.FS, []byte, Autoboot, error) {
	fsys, err := fat.Open(c.dev, c.dev.Size())
	if err != nil {
		return nil, nil, Autoboot{}, fmt.Errorf("bootconfig partition: %w", err)
	}
	b, err := fsys.ReadFile(AutobootPath)
	if err != nil {
		return nil, nil, Autoboot{}, fmt.Errorf("bootconfig partition: read %s: %w", AutobootPath, err)
	}
	a, err := ParseAutoboot(b)
	if err != nil {
		return nil, nil, Autoboot{}, fmt.Errorf("bootconfig partition: %w", err)
	}
	return fsys, b, a, nil
}

// Autoboot reads autoboot.txt from the bootconfig partition, checking that
// it names a slot for a normal and a trial boot.
func (c *Controller) Autoboot() (Autoboot, error) {
	_, _, a, err := c.readAutoboot()
	if err != nil {
		return a, err
	}
	if _, _, err := a.Slots(); err != nil {
		return a, fmt.Errorf("bootconfig partition: %w", err)
	}
	return a, nil
}

// Status reads the device tree and autoboot.txt.
func (c *Controller) Status(ctx context.Context) (bootctl.Status, error) {
	var st bootctl.Status
	if err := ctx.Err(); err != nil {
		return st, err
	}
	bi, err := ReadBootInfo(c.dt)
	if err != nil {
		return st, err
	}
	if st.Booted, err = bootctl.SlotOfBootPartition(bi.Partition); err != nil {
		return st, fmt.Errorf("the bootloader reports boot partition %d: %w (booted from a disk without the A/B layout?)", bi.Partition, err)
	}
	st.Trial = bi.Tryboot
	_, _, a, err := c.readAutoboot()
	if err != nil {
		return st, err
	}
	if st.Default, st.TrialSlot, err = a.Slots(); err != nil {
		return st, err
	}
	return st, nil
}

// ArmTryboot makes a trial reboot select slot. autoboot.txt as built
// always names the non-default slot under [tryboot], so this usually
// checks and writes nothing; a file whose [tryboot] names the default is
// rewritten in place with the default unchanged.
func (c *Controller) ArmTryboot(ctx context.Context, slot bootctl.Slot) error {
	if !slot.Valid() {
		return fmt.Errorf("arm tryboot: slot %q: want a or b", slot)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	_, _, a, err := c.readAutoboot()
	if err != nil {
		return fmt.Errorf("arm tryboot of slot %s: %w", slot, err)
	}
	def, trial, err := a.Slots()
	if err != nil {
		// Only a missing or odd [tryboot] is repaired here; the default
		// and tryboot_a_b must already be right.
		d, derr := bootctl.SlotOfBootPartition(a.Default)
		if derr != nil || !a.TrybootAB {
			return fmt.Errorf("arm tryboot of slot %s: %w", slot, err)
		}
		def, trial = d, ""
	}
	if slot == def {
		return fmt.Errorf("arm tryboot of slot %s: %w", slot, bootctl.ErrTrialOfDefault)
	}
	if trial == slot {
		return nil
	}
	if err := c.writeAutoboot(ctx, def); err != nil {
		return fmt.Errorf("arm tryboot of slot %s: %w", slot, err)
	}
	return nil
}

// Commit makes slot, the running slot, the default.
func (c *Controller) Commit(ctx context.Context, slot bootctl.Slot) error {
	if !slot.Valid() {
		return fmt.Errorf("commit: slot %q: want a or b", slot)
	}
	st, err := c.Status(ctx)
	if err != nil {
		return fmt.Errorf("commit slot %s: %w", slot, err)
	}
	if slot != st.Booted {
		return fmt.Errorf("commit slot %s while slot %s is running: %w", slot, st.Booted, bootctl.ErrCommitNotBooted)
	}
	if st.Default == slot {
		return nil
	}
	if err := c.writeAutoboot(ctx, slot); err != nil {
		return fmt.Errorf("commit slot %s: %w", slot, err)
	}
	return nil
}

// Reboot restarts the machine, into the armed trial slot when tryboot.
func (c *Controller) Reboot(ctx context.Context, tryboot bool) error {
	arg := ""
	if tryboot {
		arg = "0 tryboot"
	}
	if err := c.reboot.Reboot(ctx, arg); err != nil {
		return fmt.Errorf("reboot %q: %w", arg, err)
	}
	return nil
}

// write is one WriteAt call captured from fat.FS.Overwrite.
type write struct {
	off  int64
	data []byte
}

type recorder struct{ w []write }

func (r *recorder) WriteAt(p []byte, off int64) (int, error) {
	r.w = append(r.w, write{off, append([]byte(nil), p...)})
	return len(p), nil
}

// sectorSize is the unit the commit writes; autoboot.txt is exactly one.
const sectorSize = 512

// writeAutoboot rewrites autoboot.txt in place so that def is the default
// and the other slot the trial. It writes one sector or nothing.
func (c *Controller) writeAutoboot(ctx context.Context, def bootctl.Slot) error {
	fsys, cur, _, err := c.readAutoboot()
	if err != nil {
		return err
	}
	want, err := RenderAutoboot(def)
	if err != nil {
		return err
	}
	if bytes.Equal(cur, want) {
		return nil
	}
	if len(cur) != len(want) {
		return fmt.Errorf("%s is %d bytes, not the %d this agent rewrites in place: write the bootconfig partition from a current image", AutobootPath, len(cur), len(want))
	}
	// Ask the FAT reader where the bytes live (it writes nothing itself).
	var rec recorder
	if err := fsys.Overwrite(&rec, AutobootPath, want); err != nil {
		return err
	}
	if len(rec.w) != 1 || len(rec.w[0].data) != sectorSize || rec.w[0].off%sectorSize != 0 {
		return fmt.Errorf("%s does not sit in one aligned sector of its cluster (%d pieces): rebuild the bootconfig partition", AutobootPath, len(rec.w))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	off := rec.w[0].off
	if _, err := c.dev.WriteAt(want, off); err != nil {
		return fmt.Errorf("write %s sector at partition offset %d: %w", AutobootPath, off, err)
	}
	if err := c.dev.Sync(); err != nil {
		return fmt.Errorf("flush %s: %w", AutobootPath, err)
	}
	got := make([]byte, sectorSize)
	if _, err := c.dev.ReadAt(got, off); err != nil {
		return fmt.Errorf("read back %s: %w", AutobootPath, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("read back %s: the device returned other bytes than written (failing card?)", AutobootPath)
	}
	return nil
}
