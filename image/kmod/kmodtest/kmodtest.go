// Package kmodtest makes synthetic kernel module trees for tests: small
// ELF relocatable files whose .modinfo section says what a real module's
// does (name, depends, firmware, vermagic), laid out as
// lib/modules/<release>/…, optionally compressed the way distributions
// ship them (xz, zstd, gzip — by the real tools).
package kmodtest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// Module describes one synthetic module.
type Module struct {
	Dir      string // below lib/modules/<release>, e.g. "kernel/fs/ext4"
	Name     string // file name without .ko ("cdc-acm")
	Depends  []string
	Firmware []string
	// Vermagic overrides "<release> SMP mod_unload aarch64".
	Vermagic string
}

// KO returns an ELF64 little-endian aarch64 relocatable object with a
// .modinfo section holding the given key=value strings, NUL-separated —
// what the kernel's modpost writes and modinfo reads.
func KO(modinfo ...string) []byte {
	var info bytes.Buffer
	for _, kv := range modinfo {
		info.WriteString(kv)
		info.WriteByte(0)
	}
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := ehsize
	strOff := infoOff + info.Len()
	shOff := (strOff + len(shstr) + 7) &^ 7
	out := make([]byte, shOff+3*shentsize)
	copy(out, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(out[16:], 1)    // ET_REL
	le.PutUint16(out[18:], 0xB7) // EM_AARCH64
	le.PutUint32(out[20:], 1)    // EV_CURRENT
	le.PutUint64(out[40:], uint64(shOff))
	le.PutUint16(out[52:], ehsize)
	le.PutUint16(out[58:], shentsize)
	le.PutUint16(out[60:], 3) // section headers
	le.PutUint16(out[62:], 2) // .shstrtab index
	copy(out[infoOff:], info.Bytes())
	copy(out[strOff:], shstr)
	section := func(i int, name, typ uint32, off, size int) {
		h := out[shOff+i*shentsize:]
		le.PutUint32(h[0:], name)
		le.PutUint32(h[4:], typ)
		le.PutUint64(h[24:], uint64(off))
		le.PutUint64(h[32:], uint64(size))
		le.PutUint64(h[48:], 1) // alignment
	}
	section(1, 1, 1, infoOff, info.Len()) // .modinfo, SHT_PROGBITS
	section(2, 10, 3, strOff, len(shstr)) // .shstrtab, SHT_STRTAB
	return out
}

// Bytes is m's module file for release, uncompressed.
func (m Module) Bytes(release string) []byte {
	vermagic := m.Vermagic
	if vermagic == "" {
		vermagic = release + " SMP mod_unload aarch64"
	}
	info := []string{"license=GPL", "name=" + strings.ReplaceAll(m.Name, "-", "_"), "vermagic=" + vermagic,
		"depends=" + strings.Join(m.Depends, ",")}
	for _, fw := range m.Firmware {
		info = append(info, "firmware="+fw)
	}
	return KO(info...)
}

// Files is a module tree for release as root-relative paths and contents:
// lib/modules/<release>/<dir>/<name>.ko<ext> for each module, compressed
// with ext (".xz", ".zst", ".gz" or "" for none) by the real tool, plus
// modules.builtin listing builtin (names like "kernel/drivers/mmc/core/mmc_block").
func Files(t testing.TB, release, ext string, builtin []string, mods ...Module) map[string][]byte {
	t.Helper()
	base := path.Join("lib/modules", release)
	files := map[string][]byte{}
	for _, m := range mods {
		files[path.Join(base, m.Dir, m.Name+".ko"+ext)] = Compress(t, m.Bytes(release), ext)
	}
	var b strings.Builder
	for _, p := range builtin {
		b.WriteString(p + ".ko\n")
	}
	files[path.Join(base, "modules.builtin")] = []byte(b.String())
	return files
}

// WriteDir writes files below dir.
func WriteDir(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for p, data := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Compress runs the real xz, zstd or gzip on data (ext "" returns it as is).
func Compress(t testing.TB, data []byte, ext string) []byte {
	t.Helper()
	var cmd *exec.Cmd
	switch ext {
	case "":
		return data
	case ".xz":
		cmd = exec.Command("xz", "-c", "--check=crc32") // as the kernel's module compression does
	case ".zst":
		cmd = exec.Command("zstd", "-q", "-c")
	case ".gz":
		cmd = exec.Command("gzip", "-n", "-c")
	default:
		t.Fatalf("kmodtest: unknown compression %q", ext)
	}
	if _, err := exec.LookPath(cmd.Args[0]); err != nil {
		t.Fatalf("kmodtest: %s not installed (a test peer: see the Makefile's DEB_TEST): %v", cmd.Args[0], err)
	}
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kmodtest: %s: %v", cmd.Args[0], err)
	}
	return out
}

// ModulesDep renders depmod's modules.dep for mods (paths with ext).
func ModulesDep(ext string, mods ...Module) []byte {
	where := map[string]string{}
	for _, m := range mods {
		where[strings.ReplaceAll(m.Name, "-", "_")] = path.Join(m.Dir, m.Name+".ko"+ext)
	}
	var b strings.Builder
	for _, m := range mods {
		fmt.Fprintf(&b, "%s:", where[strings.ReplaceAll(m.Name, "-", "_")])
		for _, d := range m.Depends {
			if p, ok := where[d]; ok {
				b.WriteString(" " + p)
			}
		}
		b.WriteString("\n")
	}
	return []byte(b.String())
}
