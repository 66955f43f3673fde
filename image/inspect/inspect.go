// Package inspect reports what a built A/B image holds — partition layout
// and PARTUUIDs, which slot the firmware boots (autoboot.txt), each slot's
// version and profile, where each slot's cmdline.txt points, and the
// checksums of the files that decide how a robot boots and who it is — so
// a technician can check an image (or a card read back) without mounting
// anything.
package inspect

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/lekiwi/heartbeat/image/assemble"
	"github.com/lekiwi/heartbeat/image/ext4"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
)

// Report is the result of Inspect; its JSON form is `inspect --output json`.
type Report struct {
	Path     string      `json:"path"`
	Size     int64       `json:"size"`
	DiskGUID string      `json:"disk_guid"`
	Layout   []Partition `json:"partitions"`
	// LayoutProblem is set when the table is GPT but not our A/B layout.
	LayoutProblem string    `json:"layout_problem,omitempty"`
	Autoboot      *Autoboot `json:"autoboot,omitempty"`
	Slots         []Slot    `json:"slots,omitempty"`
	// Problems lists inconsistencies a technician should act on.
	Problems []string `json:"problems,omitempty"`
}

// Partition is one GPT entry.
type Partition struct {
	Number   int    `json:"number"`
	Name     string `json:"name"`
	PARTUUID string `json:"partuuid"`
	Type     string `json:"type_guid"`
	Start    int64  `json:"start"`
	Size     int64  `json:"size"`
	// Filesystem is "fat16", "fat32", "ext4" or "" when unreadable.
	Filesystem string `json:"filesystem,omitempty"`
	Label      string `json:"label,omitempty"`
}

// Autoboot is the firmware's slot choice from bootconfig's autoboot.txt.
type Autoboot struct {
	BootPartition    int    `json:"boot_partition"`    // normal boots
	TrybootPartition int    `json:"tryboot_partition"` // the one-shot trial
	ActiveSlot       string `json:"active_slot"`       // "a" or "b"
	SHA256           string `json:"sha256"`
}

// Slot is one of the A/B slots.
type Slot struct {
	Name      string         `json:"name"` // "a" or "b"
	Info      *assemble.Info `json:"info,omitempty"`
	Cmdline   string         `json:"cmdline,omitempty"`
	RootOK    bool           `json:"root_partuuid_ok"` // cmdline's root= is this slot's system partition
	Files     []File         `json:"files"`
	ReadError string         `json:"read_error,omitempty"`
}

// File is a checksummed file of a slot.
type File struct {
	Path   string `json:"path"` // "boot_a:cmdline.txt", "system_a:/usr/bin/lekiwi-agent"
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
	Error  string `json:"error,omitempty"`
}

// bootFiles and systemFiles are checksummed per slot.
var (
	bootFiles   = []string{"cmdline.txt", "config.txt", assemble.BootInfoFile, "user-data", "meta-data", "network-config"}
	systemFiles = []string{assemble.AgentBinary, assemble.AgentConfig, assemble.AgentUnit, assemble.ImageInfoPath, "etc/fstab"}
)

// Inspect reads the image at p.
func Inspect(p string) (*Report, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", p, err)
	}
	size := st.Size()
	if st.Mode()&os.ModeDevice != 0 {
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			return nil, fmt.Errorf("inspect %s: size of the device: %w", p, err)
		}
	}
	plan, err := layout.ReadGPT(f, size)
	if errors.Is(err, layout.ErrNotGPT) {
		return nil, fmt.Errorf("inspect %s: %w: it is not a Lekiwi image; inspect one made by `provision image build`, or a card flashed with one", p, err)
	}
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", p, err)
	}
	r := &Report{Path: p, Size: size, DiskGUID: plan.DiskGUID.String()}
	for _, part := range plan.Partitions {
		e := Partition{Number: part.Number, Name: part.Name, PARTUUID: part.GUID.String(), Type: part.Type.String(), Start: part.Start, Size: part.Size}
		sec := io.NewSectionReader(f, part.Start, part.Size)
		if fsys, err := fat.Open(sec, part.Size); err == nil {
			e.Filesystem = fmt.Sprintf("fat%d", int(fsys.Type()))
		} else if x, err := ext4.Open(sec, part.Size); err == nil {
			e.Filesystem, e.Label = "ext4", x.Label()
		}
		r.Layout = append(r.Layout, e)
	}
	if err := layout.CheckAB(plan); err != nil {
		r.LayoutProblem = err.Error()
		return r, nil
	}
	r.Autoboot = readAutoboot(f, plan, r)
	for _, slot := range []struct {
		name       string
		boot, root int
	}{{"a", layout.BootA, layout.SystemA}, {"b", layout.BootB, layout.SystemB}} {
		r.Slots = append(r.Slots, readSlot(f, plan, slot.name, slot.boot, slot.root))
	}
	if len(r.Slots) == 2 && r.Slots[0].Info != nil && r.Slots[1].Info != nil && r.Slots[0].Info.Version != r.Slots[1].Info.Version {
		// Normal after an update; worth saying.
		r.Problems = append(r.Problems, fmt.Sprintf("slots hold different versions: a %s, b %s", r.Slots[0].Info.Version, r.Slots[1].Info.Version))
	}
	for _, s := range r.Slots {
		if s.ReadError != "" {
			r.Problems = append(r.Problems, fmt.Sprintf("slot %s: %s", s.Name, s.ReadError))
		} else if !s.RootOK {
			r.Problems = append(r.Problems, fmt.Sprintf("slot %s: cmdline.txt does not point root= at its system partition: it would boot the wrong root filesystem", s.Name))
		}
	}
	return r, nil
}

func readAutoboot(f io.ReaderAt, plan *layout.Plan, r *Report) *Autoboot {
	part := plan.Part(layout.BootConfig)
	fsys, err := fat.Open(io.NewSectionReader(f, part.Start, part.Size), part.Size)
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("bootconfig: %v", err))
		return nil
	}
	b, err := fsys.ReadFile("autoboot.txt")
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("bootconfig has no readable autoboot.txt (%v): the firmware would not boot the A/B slots", err))
		return nil
	}
	normal, try, err := layout.ParseAutoboot(b)
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("bootconfig autoboot.txt: %v", err))
		return nil
	}
	sum := sha256.Sum256(b)
	a := &Autoboot{BootPartition: normal, TrybootPartition: try, SHA256: hex.EncodeToString(sum[:])}
	switch normal {
	case layout.BootA:
		a.ActiveSlot = "a"
	case layout.BootB:
		a.ActiveSlot = "b"
	default:
		r.Problems = append(r.Problems, fmt.Sprintf("autoboot.txt boots partition %d, which is neither boot_a nor boot_b", normal))
	}
	return a
}

func readSlot(f io.ReaderAt, plan *layout.Plan, name string, bootN, rootN int) Slot {
	s := Slot{Name: name, Files: []File{}}
	boot, root := plan.Part(bootN), plan.Part(rootN)
	fsys, err := fat.Open(io.NewSectionReader(f, boot.Start, boot.Size), boot.Size)
	if err != nil {
		s.ReadError = fmt.Sprintf("%s: %v", boot.Name, err)
		return s
	}
	for _, fn := range bootFiles {
		b, err := fsys.ReadFile(fn)
		s.Files = append(s.Files, fileOf(boot.Name+":"+fn, b, err))
		if err != nil {
			continue
		}
		switch fn {
		case "cmdline.txt":
			s.Cmdline = strings.TrimSpace(string(b))
			s.RootOK = strings.Contains(" "+s.Cmdline+" ", " root=PARTUUID="+root.GUID.String()+" ")
		case assemble.BootInfoFile:
			var info assemble.Info
			if json.Unmarshal(b, &info) == nil {
				s.Info = &info
			}
		}
	}
	x, err := ext4.Open(io.NewSectionReader(f, root.Start, root.Size), root.Size)
	if err != nil {
		s.ReadError = fmt.Sprintf("%s: %v", root.Name, err)
		return s
	}
	want := map[string]bool{}
	for _, p := range systemFiles {
		want["/"+p] = true
	}
	found := map[string]File{}
	errStop := errors.New("stop")
	err = x.Walk(func(p string, in *ext4.Inode) error {
		p = path.Clean("/" + p)
		if !want[p] {
			return nil
		}
		rd, err := x.Reader(in)
		if err != nil {
			found[p] = File{Path: root.Name + ":" + p, Error: err.Error()}
		} else {
			h := sha256.New()
			n, err := io.Copy(h, rd)
			found[p] = fileOf(root.Name+":"+p, nil, err)
			if err == nil {
				found[p] = File{Path: root.Name + ":" + p, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}
			}
		}
		if len(found) == len(want) {
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		s.ReadError = fmt.Sprintf("%s: %v", root.Name, err)
	}
	for _, p := range systemFiles {
		if fl, ok := found["/"+p]; ok {
			s.Files = append(s.Files, fl)
		} else {
			s.Files = append(s.Files, File{Path: root.Name + ":/" + p, Error: "missing"})
		}
	}
	return s
}

func fileOf(name string, b []byte, err error) File {
	if err != nil {
		return File{Path: name, Error: err.Error()}
	}
	sum := sha256.Sum256(b)
	return File{Path: name, Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:])}
}

// WriteText prints r for a terminal.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "%s: %d bytes, GPT disk %s\n\n", r.Path, r.Size, r.DiskGUID)
	fmt.Fprintf(w, "%-3s %-11s %-6s %-10s %12s %12s  %s\n", "#", "NAME", "FS", "LABEL", "START", "SIZE", "PARTUUID")
	for _, p := range r.Layout {
		fmt.Fprintf(w, "%-3d %-11s %-6s %-10s %12d %12d  %s\n", p.Number, p.Name, p.Filesystem, p.Label, p.Start, p.Size, p.PARTUUID)
	}
	if r.LayoutProblem != "" {
		fmt.Fprintf(w, "\nnot a Lekiwi A/B image: %s\n", r.LayoutProblem)
		return
	}
	if a := r.Autoboot; a != nil {
		fmt.Fprintf(w, "\nautoboot: slot %s (boot_partition=%d, tryboot %d)\n", a.ActiveSlot, a.BootPartition, a.TrybootPartition)
	}
	for _, s := range r.Slots {
		fmt.Fprintf(w, "\nslot %s", s.Name)
		if s.Info != nil {
			fmt.Fprintf(w, ": version %s, profile %s, base %s", s.Info.Version, s.Info.Profile, s.Info.Base)
		}
		fmt.Fprintf(w, "\n  cmdline: %s\n", s.Cmdline)
		for _, f := range s.Files {
			if f.Error != "" {
				fmt.Fprintf(w, "  %-50s %s\n", f.Path, f.Error)
			} else {
				fmt.Fprintf(w, "  %-50s %10d  %s\n", f.Path, f.Size, f.SHA256)
			}
		}
	}
	if len(r.Problems) > 0 {
		fmt.Fprintln(w, "\nproblems:")
		for _, p := range r.Problems {
			fmt.Fprintln(w, "  -", p)
		}
	}
}
