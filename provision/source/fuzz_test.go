package source

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// xzSize reads only the xz metadata: on any bytes it returns a size or an
// error, never panics or loops. (Decompressing every input to compare sizes
// would make the fuzzer crawl: a corrupt header can ask the decoder for a
// 1.5 GiB dictionary. The real tools' files are compared in the unit tests.)
func FuzzXZSize(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("YZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		size, err := xzSize(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if size < 0 {
			t.Fatalf("negative size %d", size)
		}
		// The stream this size came from is at least a header and footer.
		if len(b) < 24 {
			t.Fatalf("size %d from %d bytes", size, len(b))
		}
	})
}

func FuzzZstdSize(f *testing.F) {
	f.Add([]byte{0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x05, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		size, err := zstdSize(b)
		if err == nil && size < 0 {
			t.Fatalf("negative size %d", size)
		}
		if err == nil && len(b) < 5 {
			t.Fatalf("size %d from %d bytes", size, len(b))
		}
	})
}

func FuzzGzipSize(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0x10, 0}, int64(4096))
	f.Fuzz(func(t *testing.T, tail []byte, length int64) {
		size, err := gzipSize(tail, length)
		if err != nil {
			if !errors.Is(err, errNoSize) && len(tail) >= 8 && length >= 18 {
				t.Fatalf("a rejected ISIZE must say the size is unknown: %v", err)
			}
			return
		}
		if size <= 0 || size%sectorSize != 0 || size != int64(binary.LittleEndian.Uint32(tail[len(tail)-4:])) {
			t.Fatalf("accepted size %d from %x", size, tail)
		}
	})
}

func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-9/10", "bytes 5-5/*", "bytes 1-0/3", "bytes -1-2/3", "bytes 9223372036854775807-9223372036854775807/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		first, last, total, err := parseContentRange(s)
		if err != nil {
			return
		}
		if first < 0 || last < first || (total != -1 && total <= last) {
			t.Fatalf("%q parsed to %d-%d/%d", s, first, last, total)
		}
	})
}
