// Package customize turns a built Lekiwi image into one robot's image in
// place: it rewrites the persistent partition with the robot's identity
// (certificate, key, CA, enrollment token, agent settings) and the
// cloud-init seed (instance id, host name) on both boot slots. Only those
// regions are written — the seed files keep their padded length, so the
// FAT tables and directories do not change — which takes well under a
// second on a 4 GiB image.
package customize

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/lekiwi/heartbeat/cloudinit"
	"github.com/lekiwi/heartbeat/image/assemble"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/profiles"
)

// Robot is one robot's identity.
type Robot struct {
	RobotID         string
	Hostname        string // "" uses the profile's pattern
	CertPEM, KeyPEM []byte // both or neither
	CAPEM           []byte
	EnrollToken     string
}

// Target is what ApplyTo writes into: an image file or a whole card (a
// block device), anything readable and writable at offsets.
type Target interface {
	io.ReaderAt
	io.WriterAt
}

// Apply writes r into the image (or block device) at path.
func Apply(path string, r Robot) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("customize: %w", err)
	}
	defer f.Close()
	// Stat reports size 0 for a block device; its end is its size.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("customize %s: find its size: %w", path, err)
	}
	if err := ApplyTo(f, size, path, r); err != nil {
		return err
	}
	return f.Close()
}

// ApplyTo writes r into the image of size bytes held by dev; name says
// which target it is in errors. When dev has a Sync method (an *os.File),
// it is called before returning, so a card can be pulled once ApplyTo
// succeeds.
func ApplyTo(dev Target, size int64, name string, r Robot) error {
	if err := check(name, r); err != nil {
		return err
	}
	if err := apply(dev, size, name, r); err != nil {
		return fmt.Errorf("customize %s: %w", name, err)
	}
	if s, ok := dev.(interface{ Sync() error }); ok {
		if err := s.Sync(); err != nil {
			return fmt.Errorf("customize %s: sync: %w", name, err)
		}
	}
	return nil
}

// check refuses a robot that could never reach control.
func check(name string, r Robot) error {
	if r.RobotID == "" {
		return fmt.Errorf("customize %s: --robot-id is required", name)
	}
	if (r.CertPEM == nil) != (r.KeyPEM == nil) {
		return fmt.Errorf("customize %s: give both --cert and --key, or neither (then --enroll-token)", name)
	}
	if r.CertPEM == nil && r.EnrollToken == "" {
		return fmt.Errorf("customize %s: give --cert and --key, or --enroll-token, so the robot can reach control", name)
	}
	return nil
}

func apply(f Target, size int64, name string, r Robot) error {
	plan, err := layout.ReadGPT(f, size)
	if errors.Is(err, layout.ErrNotGPT) {
		return fmt.Errorf("%w: customize an image made by `provision image build`, or a card flashed with one", err)
	}
	if err != nil {
		return err
	}
	if err := layout.CheckAB(plan); err != nil {
		return err
	}
	info, err := ReadInfo(f, plan)
	if err != nil {
		return err
	}
	seed, err := hex.DecodeString(info.Seed)
	if err != nil {
		return fmt.Errorf("image metadata has a bad seed: %w", err)
	}
	p, err := profiles.Load(info.Profile)
	if err != nil {
		return err
	}
	s, err := cloudinit.FromProfile(p, cloudinit.Identity{RobotID: r.RobotID, Hostname: r.Hostname})
	if err != nil {
		return err
	}
	files, err := assemble.SeedFiles(s)
	if err != nil {
		return err
	}
	for _, n := range []int{layout.BootA, layout.BootB} {
		part := plan.Part(n)
		fsys, err := fat.Open(io.NewSectionReader(f, part.Start, part.Size), part.Size)
		if err != nil {
			return fmt.Errorf("%s: %w", part.Name, err)
		}
		for file, b := range files {
			if err := fsys.Overwrite(io.NewOffsetWriter(f, part.Start), file, b); err != nil {
				return fmt.Errorf("%s: %w", part.Name, err)
			}
		}
	}
	env := "LEKIWI_AGENT_ROBOT_ID=" + r.RobotID + "\n"
	robot := map[string]assemble.RobotFile{}
	idDir := layout.AgentStateDir + "/" + layout.IdentityDir + "/"
	if r.CertPEM != nil {
		robot[idDir+layout.IdentityCertFile] = assemble.RobotFile{Data: r.CertPEM, Mode: 0o644}
		robot[idDir+layout.IdentityKeyFile] = assemble.RobotFile{Data: r.KeyPEM, Mode: 0o600}
	}
	if r.CAPEM != nil {
		robot[idDir+layout.IdentityCAFile] = assemble.RobotFile{Data: r.CAPEM, Mode: 0o644}
		env += "LEKIWI_AGENT_CA_FILE=" + assemble.PersistentDir + "/" + idDir + layout.IdentityCAFile + "\n"
	}
	if r.EnrollToken != "" {
		token := layout.AgentStateDir + "/" + layout.EnrollmentTokenFile
		robot[token] = assemble.RobotFile{Data: []byte(r.EnrollToken + "\n"), Mode: 0o600}
		env += "LEKIWI_AGENT_ENROLLMENT_TOKEN_FILE=" + assemble.PersistentDir + "/" + token + "\n"
	}
	robot[assemble.RobotEnvFile] = assemble.RobotFile{Data: []byte(env), Mode: 0o644}
	part := plan.Part(layout.Persistent)
	return assemble.WritePersistent(io.NewOffsetWriter(f, part.Start), part.Size, seed, time.Unix(info.Created, 0), robot, true)
}

// ReadInfo reads the build metadata from boot_a.
func ReadInfo(r io.ReaderAt, plan *layout.Plan) (*assemble.Info, error) {
	part := plan.Part(layout.BootA)
	fsys, err := fat.Open(io.NewSectionReader(r, part.Start, part.Size), part.Size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", part.Name, err)
	}
	b, err := fsys.ReadFile(assemble.BootInfoFile)
	if err != nil {
		return nil, fmt.Errorf("%s has no %s: was the image made by provision image build? (%w)", part.Name, assemble.BootInfoFile, err)
	}
	var info assemble.Info
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("%s/%s: %w", part.Name, assemble.BootInfoFile, err)
	}
	return &info, nil
}
