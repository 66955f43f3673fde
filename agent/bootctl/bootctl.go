// Package bootctl is the agent's boot control for the A/B disk layout
// (image/layout): which slot is running, whether this boot is
// a one-shot trial of a freshly written slot, which slot a normal boot
// selects, and the three operations an update needs — arm a trial of the
// other slot, reboot (normally or into the trial), and commit the running
// trial slot as the default.
//
// Controller is an interface so the Raspberry Pi tryboot implementation
// (package rpi), a future U-Boot one, and test doubles are interchangeable.
// Package firmware models the Pi firmware's side of the contract and
// package powercut cuts power at every write of a scenario, so the
// contract below is checked rather than hoped for.
package bootctl

import (
	"context"
	"errors"
	"fmt"

	"github.com/lekiwi/heartbeat/image/layout"
)

// Slot names one half of the A/B layout: a boot partition (FAT) plus a
// system partition (ext4).
type Slot string

// The two slots.
const (
	A Slot = "a"
	B Slot = "b"
)

// ParseSlot accepts "a" or "b" (any case).
func ParseSlot(s string) (Slot, error) {
	switch s {
	case "a", "A":
		return A, nil
	case "b", "B":
		return B, nil
	}
	return "", fmt.Errorf("slot %q: want a or b", s)
}

// Valid reports whether s is A or B.
func (s Slot) Valid() bool { return s == A || s == B }

// Other is the slot that is not s.
func (s Slot) Other() Slot {
	if s == A {
		return B
	}
	return A
}

// BootPartition is the slot's boot partition number (1-based, as in
// /dev/mmcblk0pN and autoboot.txt's boot_partition).
func (s Slot) BootPartition() int {
	if s == B {
		return layout.BootB
	}
	return layout.BootA
}

// SystemPartition is the slot's root filesystem partition number.
func (s Slot) SystemPartition() int {
	if s == B {
		return layout.SystemB
	}
	return layout.SystemA
}

// SlotOfBootPartition maps a boot partition number back to its slot.
func SlotOfBootPartition(n int) (Slot, error) {
	switch n {
	case layout.BootA:
		return A, nil
	case layout.BootB:
		return B, nil
	}
	return "", fmt.Errorf("partition %d is neither boot_a (%d) nor boot_b (%d)", n, layout.BootA, layout.BootB)
}

// Status is what the boot loader and the boot configuration say now.
type Status struct {
	// Booted is the slot the running system was loaded from.
	Booted Slot
	// Trial is true when this boot was a one-shot trial (tryboot). It stays
	// true for the whole boot, also after Commit: it describes how this
	// boot started, not what the next one does.
	Trial bool
	// Default is the committed slot: what any normal boot, reset, watchdog
	// reset or power cycle selects.
	Default Slot
	// TrialSlot is the slot a trial reboot (Reboot(ctx, true)) would select.
	TrialSlot Slot
}

// PendingCommit reports whether this is a trial boot of a slot that is not
// the default yet: the updater's health check decides between Commit and
// Reboot(ctx, false).
func (s Status) PendingCommit() bool { return s.Trial && s.Booted != s.Default }

// Controller switches between the A/B slots.
//
// Durability contract (what survives a power cut right after the call
// returns; a call that returns an error leaves the previous state or the
// new one, never a third):
//
//   - Status reads only; it writes nothing.
//   - ArmTryboot(slot) makes the boot configuration say that a trial
//     reboot selects slot, and leaves the default unchanged. It is durable
//     when it returns. It does not reboot, and a later normal reboot,
//     reset or power cycle still boots the default: arming is harmless on
//     its own. slot must not be the default.
//   - Reboot(tryboot) restarts the machine. With tryboot the next boot —
//     and only the next one — selects the armed trial slot; the one-shot
//     flag is volatile and consumed before the firmware loads anything, so
//     any hang (watchdog reset), crash or power cut during the trial falls
//     back to the default. On success the machine restarts: Reboot does
//     not return, or (asked of systemd, see agent/reboot) returns nil with
//     the restart under way and the caller about to be stopped. An error
//     means no restart was started; the service manager's refusal is in it.
//   - Commit(slot) makes slot the default. slot must be the running slot
//     (commit only what has booted). It is durable when it returns; before
//     that, a power cut leaves either the old default or slot — on the Pi
//     the change is one sector in which only the partition digits differ,
//     so every mix of old and new bytes selects one of the two slots.
//     Committing the default again writes nothing.
type Controller interface {
	Status(ctx context.Context) (Status, error)
	ArmTryboot(ctx context.Context, slot Slot) error
	Reboot(ctx context.Context, tryboot bool) error
	Commit(ctx context.Context, slot Slot) error
}

// Errors a Controller returns for requests that break the contract; wrap-
// checked with errors.Is.
var (
	// ErrTrialOfDefault: a trial of the default slot would test nothing.
	ErrTrialOfDefault = errors.New("the slot to try is already the default")
	// ErrCommitNotBooted: only the slot that is running can be committed.
	ErrCommitNotBooted = errors.New("only the running slot can be committed")
)
