package fat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"unicode/utf16"
)

// FS is a FAT16 or FAT32 filesystem opened to look files up, read them and
// rewrite them in place with the same length.
type FS struct {
	r     io.ReaderAt
	g     geometry
	root  uint32 // FAT32 root cluster
	Label string
}

// File is a directory entry found by Lookup.
type File struct {
	Name  string
	Size  int64
	Dir   bool
	first uint32
}

// Open reads the boot sector of the FAT16 or FAT32 filesystem of size bytes
// at offset 0 of r.
func Open(r io.ReaderAt, size int64) (*FS, error) {
	b := make([]byte, sectorSize)
	if _, err := r.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("read FAT boot sector: %w", err)
	}
	if b[bsSignature] != 0x55 || b[bsSignature+1] != 0xAA {
		return nil, errors.New("not a FAT filesystem: no boot signature")
	}
	p := readBPB(b)
	if p.bytesPerSector != sectorSize {
		return nil, fmt.Errorf("FAT sector size %d is not supported (512 only)", p.bytesPerSector)
	}
	g := geometry{
		spc:          p.sectorsPerCluster,
		reserved:     p.reserved,
		rootEntries:  p.rootEntries,
		totalSectors: p.totalSectors,
		fatSectors:   p.fatSectors,
	}
	nfats := p.fats
	if g.spc == 0 || g.spc&(g.spc-1) != 0 || nfats == 0 || g.reserved == 0 || g.fatSectors == 0 || int64(g.totalSectors)*sectorSize > size {
		return nil, errors.New("not a FAT filesystem: inconsistent boot sector")
	}
	rootSectors := (g.rootEntries*dirEntrySize + sectorSize - 1) / sectorSize
	g.rootDirSector = g.reserved + nfats*g.fatSectors
	g.dataStart = g.rootDirSector + rootSectors
	if g.dataStart >= g.totalSectors {
		return nil, errors.New("not a FAT filesystem: no data area")
	}
	g.clusters = (g.totalSectors - g.dataStart) / g.spc
	f := &FS{r: r, g: g}
	label := b[extBPB16+extLabel : extBPB16+extLabel+labelLen]
	g.typ = typeForClusters(g.clusters)
	switch g.typ {
	case FAT32:
		f.root = p.rootCluster
		label = b[extBPB32+extLabel : extBPB32+extLabel+labelLen]
	case FAT12:
		return nil, fmt.Errorf("FAT12 (%d clusters) is not supported", g.clusters)
	}
	if g.typ == FAT16 && g.rootEntries == 0 {
		return nil, errors.New("FAT16 without root directory entries")
	}
	f.g = g
	f.Label = strings.TrimRight(string(label), " ")
	return f, nil
}

// Type is FAT16 or FAT32.
func (f *FS) Type() Type { return f.g.typ }

func (f *FS) next(c uint32) (uint32, error) {
	le := binary.LittleEndian
	var off int64
	var buf [4]byte
	if f.g.typ == FAT16 {
		off = int64(f.g.reserved)*sectorSize + 2*int64(c)
		if _, err := f.r.ReadAt(buf[:2], off); err != nil {
			return 0, err
		}
		v := uint32(le.Uint16(buf[:]))
		if v >= eocMin16 {
			return 0, nil
		}
		return v, nil
	}
	off = int64(f.g.reserved)*sectorSize + 4*int64(c)
	if _, err := f.r.ReadAt(buf[:], off); err != nil {
		return 0, err
	}
	v := le.Uint32(buf[:]) & fat32Mask
	if v >= eocMin32 {
		return 0, nil
	}
	return v, nil
}

// chain lists the clusters starting at first.
func (f *FS) chain(first uint32) ([]uint32, error) {
	var out []uint32
	for c := first; c != 0; {
		if c < 2 || c >= f.g.clusters+2 || uint32(len(out)) > f.g.clusters {
			return nil, fmt.Errorf("FAT cluster chain from %d is broken at %d", first, c)
		}
		out = append(out, c)
		n, err := f.next(c)
		if err != nil {
			return nil, fmt.Errorf("read FAT: %w", err)
		}
		c = n
	}
	return out, nil
}

func (f *FS) readChain(first uint32, limit int64) ([]byte, error) {
	cl, err := f.chain(first)
	if err != nil {
		return nil, err
	}
	cb := f.g.clusterBytes()
	if limit < 0 {
		limit = int64(len(cl)) * cb
	}
	if limit > int64(len(cl))*cb {
		return nil, fmt.Errorf("file of %d bytes has only %d clusters", limit, len(cl))
	}
	out := make([]byte, limit)
	for i := int64(0); i*cb < limit; i++ {
		end := min((i+1)*cb, limit)
		if _, err := f.r.ReadAt(out[i*cb:end], f.g.clusterOffset(cl[i])); err != nil {
			return nil, fmt.Errorf("read FAT cluster %d: %w", cl[i], err)
		}
	}
	return out, nil
}

func (f *FS) readDir(first uint32, isRoot bool) ([]File, error) {
	var raw []byte
	var err error
	if isRoot && f.g.typ == FAT16 {
		raw = make([]byte, f.g.rootEntries*dirEntrySize)
		_, err = f.r.ReadAt(raw, int64(f.g.rootDirSector)*sectorSize)
	} else {
		if isRoot {
			first = f.root
		}
		raw, err = f.readChain(first, -1)
	}
	if err != nil {
		return nil, fmt.Errorf("read FAT directory: %w", err)
	}
	var out []File
	var lfn []uint16
	var lfnSum byte
	le := binary.LittleEndian
	for i := 0; i+dirEntrySize <= len(raw); i += dirEntrySize {
		e := raw[i : i+dirEntrySize]
		if e[deName] == entryEnd {
			break
		}
		if e[deName] == entryFree {
			lfn = nil
			continue
		}
		if e[deAttr] == attrLFN {
			seq := int(e[0] & lfnOrder)
			if e[0]&lfnLast != 0 {
				lfn = make([]uint16, lfnChars*seq)
				lfnSum = e[lfnChecksum]
			}
			if seq == 0 || lfnChars*seq > len(lfn) || e[lfnChecksum] != lfnSum {
				lfn = nil
				continue
			}
			part := lfn[lfnChars*(seq-1):]
			for j := 0; j < lfnChars; j++ {
				part[j] = le.Uint16(e[lfnCharOffset(j):])
			}
			continue
		}
		if e[deAttr]&attrVolume != 0 {
			lfn = nil
			continue
		}
		short := e[deName : deName+11]
		name := ""
		if lfn != nil && checksum(short) == lfnSum {
			end := len(lfn)
			for j, c := range lfn {
				if c == 0 {
					end = j
					break
				}
			}
			name = string(utf16.Decode(lfn[:end]))
		}
		lfn = nil
		if name == "" {
			base, ext := strings.TrimRight(string(short[:8]), " "), strings.TrimRight(string(short[8:]), " ")
			name = base
			if ext != "" {
				name += "." + ext
			}
		}
		if name == "." || name == ".." {
			continue
		}
		cl := uint32(le.Uint16(e[deClusterLo:]))
		if f.g.typ == FAT32 {
			cl |= uint32(le.Uint16(e[deClusterHi:])) << 16
		}
		out = append(out, File{Name: name, Size: int64(le.Uint32(e[deSize:])), Dir: e[deAttr]&attrDir != 0, first: cl})
	}
	return out, nil
}

// ReadDir lists the directory at p ("" or "." for the root).
func (f *FS) ReadDir(p string) ([]File, error) {
	if p == "" || p == "." {
		return f.readDir(0, true)
	}
	d, err := f.Lookup(p)
	if err != nil {
		return nil, err
	}
	if !d.Dir {
		return nil, fmt.Errorf("%s is not a directory", p)
	}
	return f.readDir(d.first, false)
}

// Lookup finds p (slash-separated, case-insensitive like FAT).
func (f *FS) Lookup(p string) (File, error) {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	var cur File
	isRoot := true
	for _, part := range parts {
		entries, err := f.readDir(cur.first, isRoot)
		if err != nil {
			return File{}, err
		}
		found := false
		for _, e := range entries {
			if strings.EqualFold(e.Name, part) {
				cur, found = e, true
				break
			}
		}
		if !found {
			return File{}, fmt.Errorf("%s: %w", p, fs.ErrNotExist)
		}
		isRoot = false
	}
	return cur, nil
}

// ReadFile returns the content of the file at p.
func (f *FS) ReadFile(p string) ([]byte, error) {
	e, err := f.Lookup(p)
	if err != nil {
		return nil, err
	}
	if e.Dir {
		return nil, fmt.Errorf("%s is a directory", p)
	}
	if e.Size == 0 {
		return []byte{}, nil
	}
	return f.readChain(e.first, e.Size)
}

// Overwrite replaces the content of the file at p with data of exactly the
// same length, writing only its clusters: no FAT, directory or size change,
// so an interrupted rewrite never leaves the filesystem inconsistent.
func (f *FS) Overwrite(w io.WriterAt, p string, data []byte) error {
	e, err := f.Lookup(p)
	if err != nil {
		return err
	}
	if e.Dir || e.Size != int64(len(data)) {
		return fmt.Errorf("%s is %d bytes on the FAT partition; an in-place rewrite must keep that length (got %d)", p, e.Size, len(data))
	}
	cl, err := f.chain(e.first)
	if err != nil {
		return err
	}
	cb := f.g.clusterBytes()
	if int64(len(cl))*cb < e.Size {
		return fmt.Errorf("%s: %d bytes in %d clusters: the FAT chain is too short", p, e.Size, len(cl))
	}
	for i := int64(0); i*cb < e.Size; i++ {
		end := min((i+1)*cb, e.Size)
		if _, err := w.WriteAt(data[i*cb:end], f.g.clusterOffset(cl[i])); err != nil {
			return fmt.Errorf("rewrite %s: %w", p, err)
		}
	}
	return nil
}
