package kmod

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/lekiwi/heartbeat/image/sparse"
)

// banner is the kernel's linux_banner: "Linux version <release> (<builder>)".
var banner = regexp.MustCompile(`Linux version ([0-9][^ \x00]*) \(`)

// KernelRelease reads the release ("6.1.0-57-arm64") from a kernel image's
// version banner: an arm64 Image as Debian ships it (vmlinuz-*) or
// gzip-compressed as Raspberry Pi OS's kernel8.img can be.
func KernelRelease(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		dr, closeDec, err := sparse.Decompress(br, ".gz")
		if err != nil {
			return "", fmt.Errorf("kernel image: %w", err)
		}
		defer closeDec()
		br = bufio.NewReaderSize(dr, 1<<20)
	}
	// Scan in overlapping windows so a banner across a boundary is found.
	const window, overlap = 4 << 20, 256
	buf := make([]byte, 0, window+overlap)
	chunk := make([]byte, window)
	for {
		n, err := io.ReadFull(br, chunk)
		buf = append(buf, chunk[:n]...)
		if m := banner.FindSubmatch(buf); m != nil {
			return string(m[1]), nil
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return "", errors.New("kernel image has no \"Linux version\" banner: not a Linux kernel, or compressed in a way not read here (gzip is)")
		}
		if err != nil {
			return "", fmt.Errorf("kernel image: %w", err)
		}
		buf = append(buf[:0], buf[len(buf)-overlap:]...)
	}
}
