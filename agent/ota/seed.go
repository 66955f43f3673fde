package ota

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/cloudinit"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
)

// seedFiles are the cloud-init seed files `provision image customize`
// writes per robot (instance id, host name) into both boot slots.
func seedFiles() []string {
	return []string{cloudinit.MetaDataFile, cloudinit.UserDataFile, cloudinit.NetworkConfigFile}
}

// carrySeed copies the robot's cloud-init seed from the active boot
// partition to the target one, which the release filled with its generic
// seed: without it, the new slot would boot as a fresh, unnamed instance.
//
// The seed files are padded to a fixed size at build time, so they are
// rewritten in place (fat.FS.Overwrite: data clusters only, no FAT or
// directory change). It runs after the slot was verified against the
// release and before the trial is armed: a power cut in here leaves the
// old slot the default, and the next start writes the slot again (the
// release's pieces, then the seed).
func carrySeed(ctx context.Context, d Disk, plan *layout.Plan, active, target bootctl.Slot) error {
	from, to := plan.Part(active.BootPartition()), plan.Part(target.BootPartition())
	src, err := fat.Open(io.NewSectionReader(d, from.Start, from.Size), from.Size)
	if err != nil {
		return fmt.Errorf("carry the robot's cloud-init seed: active %s: %w", from.Name, err)
	}
	dst, err := fat.Open(io.NewSectionReader(d, to.Start, to.Size), to.Size)
	if err != nil {
		return fmt.Errorf("carry the robot's cloud-init seed: new %s: %w", to.Name, err)
	}
	w := io.NewOffsetWriter(d, to.Start)
	wrote := map[string][]byte{}
	for _, name := range seedFiles() {
		if err := ctx.Err(); err != nil {
			return err
		}
		b, err := src.ReadFile(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // an image built without this seed file: nothing to carry
		}
		if err != nil {
			return fmt.Errorf("carry the robot's cloud-init seed: read %s/%s: %w", from.Name, name, err)
		}
		cur, err := dst.ReadFile(name)
		if err != nil {
			return fmt.Errorf("carry the robot's cloud-init seed: the release's %s has no usable %s (%w): it cannot hold this robot's seed; rebuild the release from an image made by provision image build", to.Name, name, err)
		}
		if bytes.Equal(cur, b) {
			continue
		}
		if err := dst.Overwrite(w, name, b); err != nil {
			return fmt.Errorf("carry the robot's cloud-init seed into %s: %w (the release's seed files must have the padded size of this robot's)", to.Name, err)
		}
		wrote[name] = b
	}
	if len(wrote) == 0 {
		return nil
	}
	if err := d.Sync(); err != nil {
		return fmt.Errorf("carry the robot's cloud-init seed: flush %s: %w", to.Name, err)
	}
	dropCache(d, to.Start, to.Size)
	for name, want := range wrote {
		got, err := dst.ReadFile(name)
		if err != nil {
			return fmt.Errorf("carry the robot's cloud-init seed: read back %s/%s: %w", to.Name, name, err)
		}
		if !bytes.Equal(got, want) {
			return fmt.Errorf("carry the robot's cloud-init seed: %s/%s reads back different from what was written (a failing SD card?)", to.Name, name)
		}
	}
	return nil
}
