package bmap

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// formatVersion is the bmap format WriteXML produces.
const formatVersion = "2.0"

// maxBmapFileSize bounds what Parse reads: a map of a 1 TiB image fragmented into
// 4 KiB ranges would still be smaller.
const maxBmapFileSize = 256 << 20

// fileChecksumLen is the length of a hex sha256, the placeholder the file checksum
// is computed over.
const fileChecksumLen = 2 * sha256.Size

// headerTemplate is bmaptool's own (bmaptools/BmapCreate.py, _BMAP_START_TEMPLATE),
// reproduced byte for byte so that our maps and `bmaptool create`'s are identical
// for the same image and can be compared with cmp.
const headerTemplate = `<?xml version="1.0" ?>
<!-- This file contains the block map for an image file, which is basically
     a list of useful (mapped) block numbers in the image file. In other words,
     it lists only those blocks which contain data (boot sector, partition
     table, file-system metadata, files, directories, extents, etc). These
     blocks have to be copied to the target device. The other blocks do not
     contain any useful data and do not have to be copied to the target
     device.

     The block map an optimization which allows to copy or flash the image to
     the image quicker than copying of flashing the entire image. This is
     because with bmap less data is copied: <MappedBlocksCount> blocks instead
     of <BlocksCount> blocks.

     Besides the machine-readable data, this file contains useful commentaries
     which contain human-readable information like image size, percentage of
     mapped data, etc.

     The 'version' attribute is the block map file format version in the
     'major.minor' format. The version major number is increased whenever an
     incompatible block map format change is made. The minor number changes
     in case of minor backward-compatible changes. -->

<bmap version="%s">
    <!-- Image size in bytes: %s -->
    <ImageSize> %d </ImageSize>

    <!-- Size of a block in bytes -->
    <BlockSize> %d </BlockSize>

    <!-- Count of blocks in the image file -->
    <BlocksCount> %d </BlocksCount>

`

// WriteXML writes m as a bmap 2.0 file with sha256 checksums, byte-identical to what
// `bmaptool create` writes for the same map, including its file checksum: the sha256
// of the whole file with the checksum's own 64 characters set to ASCII "0".
func (m *Map) WriteXML(w io.Writer) error {
	if err := m.Validate(); err != nil {
		return fmt.Errorf("bmap: refusing to write an invalid map: %w", err)
	}
	var b bytes.Buffer
	imageHuman := humanSize(m.ImageSize)
	fmt.Fprintf(&b, headerTemplate, formatVersion, imageHuman, m.ImageSize, m.BlockSize, m.BlocksCount)

	// bmaptool writes blank placeholders, then overwrites them in place once the
	// counts are known; a longer replacement eats into the text after it. We do the
	// same so the bytes match.
	b.WriteString("    <!-- Count of mapped blocks: ")
	mappedCommentPos := b.Len()
	fmt.Fprintf(&b, "%s or %s   -->\n", spaces(len(imageHuman)), spaces(len("100.0%")))
	b.WriteString("    <MappedBlocksCount> ")
	mappedCountPos := b.Len()
	fmt.Fprintf(&b, "%s </MappedBlocksCount>\n\n", spaces(len(strconv.FormatInt(m.BlocksCount, 10))))
	b.WriteString("    <!-- Type of checksum used in this file -->\n")
	b.WriteString("    <ChecksumType> sha256 </ChecksumType>\n\n")
	b.WriteString("    <!-- The checksum of this bmap file. When it is calculated, the value of\n")
	b.WriteString("         the checksum has be zero (all ASCII \"0\" symbols).  -->\n")
	b.WriteString("    <BmapFileChecksum> ")
	checksumPos := b.Len()
	b.WriteString(strings.Repeat("0", fileChecksumLen) + " </BmapFileChecksum>\n\n")
	b.WriteString("    <!-- The block map which consists of elements which may either be a\n")
	b.WriteString("         range of blocks or a single block. The 'chksum' attribute\n")
	b.WriteString("         (if present) is the checksum of this blocks range. -->\n")
	b.WriteString("    <BlockMap>\n")
	for _, r := range m.Ranges {
		chksum := ""
		if r.SHA256 != "" {
			chksum = ` chksum="` + r.SHA256 + `"`
		}
		if r.First != r.Last {
			fmt.Fprintf(&b, "        <Range%s> %d-%d </Range>\n", chksum, r.First, r.Last)
		} else {
			fmt.Fprintf(&b, "        <Range%s> %d </Range>\n", chksum, r.First)
		}
	}
	b.WriteString("    </BlockMap>\n")
	b.WriteString("</bmap>\n")

	out := b.Bytes()
	percent := float64(m.MappedBlocks) * 100.0 / float64(m.BlocksCount)
	overwrite(&out, mappedCommentPos, fmt.Sprintf("%s or %.1f%%", humanSize(m.MappedBlocks*int64(m.BlockSize)), percent))
	overwrite(&out, mappedCountPos, strconv.FormatInt(m.MappedBlocks, 10))
	sum := sha256.Sum256(out)
	overwrite(&out, checksumPos, hex.EncodeToString(sum[:]))

	if _, err := w.Write(out); err != nil {
		return fmt.Errorf("bmap: write map: %w", err)
	}
	return nil
}

// overwrite writes s over *b at pos, as a seek and write into a file would.
func overwrite(b *[]byte, pos int, s string) {
	if end := pos + len(s); end > len(*b) {
		*b = append(*b, make([]byte, end-len(*b))...)
	}
	copy((*b)[pos:], s)
}

func spaces(n int) string { return strings.Repeat(" ", n) }

// humanSize is bmaptool's human_size (bmaptools/BmapHelpers.py), including its float
// arithmetic, so that the comments in our maps match bmaptool's.
func humanSize(size int64) string {
	if size == 1 {
		return "1 byte"
	}
	if size < 512 {
		return fmt.Sprintf("%d bytes", size)
	}
	f := float64(size)
	for _, unit := range []string{"KiB", "MiB", "GiB", "TiB"} {
		f /= 1024
		if f < 1024 {
			return fmt.Sprintf("%.1f %s", f, unit)
		}
	}
	return fmt.Sprintf("%.1f EiB", f) // bmaptool's label for what is really PiB
}

// xmlBmap mirrors the bmap file. Elements are slices so that duplicates, which
// bmaptool would silently resolve to the first, are reported instead.
type xmlBmap struct {
	XMLName           xml.Name `xml:"bmap"`
	Version           string   `xml:"version,attr"`
	ImageSize         []string `xml:"ImageSize"`
	BlockSize         []string `xml:"BlockSize"`
	BlocksCount       []string `xml:"BlocksCount"`
	MappedBlocksCount []string `xml:"MappedBlocksCount"`
	ChecksumType      []string `xml:"ChecksumType"`
	BmapFileChecksum  []string `xml:"BmapFileChecksum"`
	BlockMap          []struct {
		Ranges []struct {
			Chksum string `xml:"chksum,attr"`
			Text   string `xml:",chardata"`
		} `xml:"Range"`
	} `xml:"BlockMap"`
}

// Parse reads a bmap file of format 1.4 or 2.x with sha256 checksums (what bmaptool
// has written since 2013), verifies its file checksum the way `bmaptool copy` does
// and checks the map is consistent (see Map.Validate).
func Parse(r io.Reader) (*Map, error) {
	raw, err := io.ReadAll(io.LimitReader(r, maxBmapFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("bmap: read map: %w", err)
	}
	if len(raw) > maxBmapFileSize {
		return nil, fmt.Errorf("bmap: map larger than %d bytes; not a bmap file", maxBmapFileSize)
	}
	var x xmlBmap
	dec := xml.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&x); err != nil {
		return nil, fmt.Errorf("bmap: not a bmap XML document: %w", err)
	}
	if err := expectOnlyTrailingSpace(dec); err != nil {
		return nil, err
	}

	major, minor, err := parseVersion(x.Version)
	if err != nil {
		return nil, err
	}
	if major > 2 || major < 1 || major == 1 && minor < 4 {
		return nil, fmt.Errorf("bmap: format version %q not supported; only 1.4 and 2.x (with sha256 checksums) are", x.Version)
	}

	var m Map
	var blockSize int64
	fields := []struct {
		name string
		vals []string
		dst  *int64
	}{
		{"ImageSize", x.ImageSize, &m.ImageSize},
		{"BlockSize", x.BlockSize, &blockSize},
		{"BlocksCount", x.BlocksCount, &m.BlocksCount},
		{"MappedBlocksCount", x.MappedBlocksCount, &m.MappedBlocks},
	}
	for _, f := range fields {
		s, err := single(f.name, f.vals)
		if err != nil {
			return nil, err
		}
		if *f.dst, err = parseCount(s); err != nil {
			return nil, fmt.Errorf("bmap: <%s>: %w", f.name, err)
		}
	}
	if blockSize <= 0 || blockSize > maxBlockSize {
		return nil, fmt.Errorf("bmap: <BlockSize> %d out of range (1..%d)", blockSize, maxBlockSize)
	}
	m.BlockSize = int(blockSize)

	csType, err := single("ChecksumType", x.ChecksumType)
	if err != nil {
		return nil, err
	}
	if !strings.EqualFold(csType, "sha256") {
		return nil, fmt.Errorf("bmap: checksum type %q not supported; only sha256 is (recreate the map with `bmaptool create` defaults)", csType)
	}
	fileSum, err := single("BmapFileChecksum", x.BmapFileChecksum)
	if err != nil {
		return nil, err
	}
	if err := verifyFileChecksum(raw, fileSum); err != nil {
		return nil, err
	}

	if len(x.BlockMap) != 1 {
		return nil, fmt.Errorf("bmap: want exactly one <BlockMap>, found %d", len(x.BlockMap))
	}
	for i, xr := range x.BlockMap[0].Ranges {
		first, last, err := parseRange(xr.Text)
		if err != nil {
			return nil, fmt.Errorf("bmap: range %d %q: %w", i, strings.TrimSpace(xr.Text), err)
		}
		m.Ranges = append(m.Ranges, Range{First: first, Last: last, SHA256: xr.Chksum})
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("bmap: inconsistent map: %w", err)
	}
	return &m, nil
}

// verifyFileChecksum checks the file's self-checksum exactly as bmaptool's
// _verify_bmap_checksum does: the first occurrence of the stored checksum in the raw
// file is replaced by zeros and the whole file hashed.
func verifyFileChecksum(raw []byte, stored string) error {
	if !isLowerHex(stored, fileChecksumLen) {
		return fmt.Errorf("bmap: <BmapFileChecksum> %q is not a lowercase hex sha256", stored)
	}
	pos := bytes.Index(raw, []byte(stored))
	if pos < 0 {
		return errors.New("bmap: <BmapFileChecksum> is not stored literally in the file (escaped?); cannot verify it")
	}
	zeroed := bytes.Clone(raw)
	copy(zeroed[pos:], strings.Repeat("0", fileChecksumLen))
	sum := sha256.Sum256(zeroed)
	if got := hex.EncodeToString(sum[:]); got != stored {
		return fmt.Errorf("bmap: file checksum mismatch: computed %s, file says %s; the map is corrupted or was edited, recreate it", got, stored)
	}
	return nil
}

func expectOnlyTrailingSpace(dec *xml.Decoder) error {
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("bmap: after </bmap>: %w", err)
		}
		switch t := tok.(type) {
		case xml.Comment, xml.ProcInst:
		case xml.CharData:
			if len(bytes.TrimSpace(t)) != 0 {
				return errors.New("bmap: text after </bmap>; the file is not a single bmap document")
			}
		default:
			return errors.New("bmap: content after </bmap>; the file is not a single bmap document")
		}
	}
}

func single(name string, vals []string) (string, error) {
	if len(vals) != 1 {
		return "", fmt.Errorf("bmap: want exactly one <%s>, found %d", name, len(vals))
	}
	return strings.TrimSpace(vals[0]), nil
}

func parseVersion(v string) (major, minor int, err error) {
	a, b, ok := strings.Cut(strings.TrimSpace(v), ".")
	if ok {
		major, err = strconv.Atoi(a)
		if err == nil {
			minor, err = strconv.Atoi(b)
		}
	}
	if !ok || err != nil || major < 0 || minor < 0 {
		return 0, 0, fmt.Errorf("bmap: version attribute %q is not major.minor", v)
	}
	return major, minor, nil
}

func parseCount(s string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a non-negative integer", s)
	}
	return n, nil
}

// parseRange reads "X" or "X-Y".
func parseRange(s string) (first, last int64, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if first, err = parseCount(a); err != nil {
		return 0, 0, err
	}
	if !isRange {
		return first, first, nil
	}
	if last, err = parseCount(b); err != nil {
		return 0, 0, err
	}
	return first, last, nil
}
