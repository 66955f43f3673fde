package fatfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"unicode/utf16"
)

// FS is a FAT filesystem opened for reading (and same-length rewrites).
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

// Open reads the boot sector of the FAT filesystem of size bytes at offset
// 0 of r.
func Open(r io.ReaderAt, size int64) (*FS, error) {
	b := make([]byte, sectorSize)
	if _, err := r.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("read FAT boot sector: %w", err)
	}
	le := binary.LittleEndian
	if b[510] != 0x55 || b[511] != 0xAA {
		return nil, errors.New("not a FAT filesystem: no boot signature")
	}
	var g geometry
	if le.Uint16(b[11:]) != sectorSize {
		return nil, fmt.Errorf("FAT sector size %d is not supported (512 only)", le.Uint16(b[11:]))
	}
	g.spc = uint32(b[13])
	g.reserved = uint32(le.Uint16(b[14:]))
	nfats := uint32(b[16])
	g.rootEntries = uint32(le.Uint16(b[17:]))
	g.totalSectors = uint32(le.Uint16(b[19:]))
	if g.totalSectors == 0 {
		g.totalSectors = le.Uint32(b[32:])
	}
	g.fatSectors = uint32(le.Uint16(b[22:]))
	if g.fatSectors == 0 {
		g.fatSectors = le.Uint32(b[36:])
	}
	if g.spc == 0 || g.spc&(g.spc-1) != 0 || nfats == 0 || g.reserved == 0 || g.fatSectors == 0 || int64(g.totalSectors)*sectorSize > size {
		return nil, errors.New("not a FAT filesystem: inconsistent boot sector")
	}
	rootSectors := (g.rootEntries*32 + sectorSize - 1) / sectorSize
	g.rootDirSector = g.reserved + nfats*g.fatSectors
	g.dataStart = g.rootDirSector + rootSectors
	if g.dataStart >= g.totalSectors {
		return nil, errors.New("not a FAT filesystem: no data area")
	}
	g.clusters = (g.totalSectors - g.dataStart) / g.spc
	f := &FS{r: r, g: g}
	label := b[43:54]
	if g.clusters >= 65525 {
		g.typ = FAT32
		f.root = le.Uint32(b[44:])
		label = b[71:82]
	} else if g.clusters >= 4085 {
		g.typ = FAT16
	} else {
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
		if v >= 0xFFF8 {
			return 0, nil
		}
		return v, nil
	}
	off = int64(f.g.reserved)*sectorSize + 4*int64(c)
	if _, err := f.r.ReadAt(buf[:], off); err != nil {
		return 0, err
	}
	v := le.Uint32(buf[:]) & 0x0FFFFFFF
	if v >= 0x0FFFFFF8 {
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
		raw = make([]byte, f.g.rootEntries*32)
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
	for i := 0; i+32 <= len(raw); i += 32 {
		e := raw[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xE5 {
			lfn = nil
			continue
		}
		if e[11] == 0x0F {
			seq := int(e[0] & 0x1F)
			if e[0]&0x40 != 0 {
				lfn = make([]uint16, 13*seq)
				lfnSum = e[13]
			}
			if seq == 0 || 13*seq > len(lfn) || e[13] != lfnSum {
				lfn = nil
				continue
			}
			part := lfn[13*(seq-1):]
			for j := 0; j < 13; j++ {
				off := 1 + 2*j
				if j >= 5 {
					off = 14 + 2*(j-5)
				}
				if j >= 11 {
					off = 28 + 2*(j-11)
				}
				part[j] = le.Uint16(e[off:])
			}
			continue
		}
		if e[11]&0x08 != 0 {
			lfn = nil
			continue
		}
		var short [11]byte
		copy(short[:], e[:11])
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
		cl := uint32(le.Uint16(e[26:]))
		if f.g.typ == FAT32 {
			cl |= uint32(le.Uint16(e[20:])) << 16
		}
		out = append(out, File{Name: name, Size: int64(le.Uint32(e[28:])), Dir: e[11]&0x10 != 0, first: cl})
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
