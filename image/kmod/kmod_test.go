package kmod_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/lekiwi/heartbeat/image/aptfetch/aptfetchtest"
	"github.com/lekiwi/heartbeat/image/base"
	"github.com/lekiwi/heartbeat/image/kmod"
	"github.com/lekiwi/heartbeat/image/kmod/kmodtest"
)

const release = "6.1.0-9-arm64"

var synthetic = []kmodtest.Module{
	{Dir: "kernel/fs/ext4", Name: "ext4", Depends: []string{"mbcache", "jbd2", "crc16"}},
	{Dir: "kernel/fs/jbd2", Name: "jbd2"},
	{Dir: "kernel/fs", Name: "mbcache"},
	{Dir: "kernel/lib", Name: "crc16"},
	{Dir: "kernel/drivers/net", Name: "mii"},
	{Dir: "kernel/drivers/net/usb", Name: "usbnet", Depends: []string{"mii"}},
	{Dir: "kernel/drivers/net/usb", Name: "r8152", Depends: []string{"usbnet", "mii"}, Firmware: []string{"rtl_nic/rtl8153a-4.fw", "rtl_nic/rtl8156b-2.fw"}},
	{Dir: "kernel/drivers/usb/class", Name: "cdc-acm", Depends: []string{"usbcore"}},
	{Dir: "kernel/drivers/usb/core", Name: "usbcore"},
	{Dir: "kernel/drivers/mmc/host", Name: "sdhci-iproc", Depends: []string{"mmc_core"}}, // mmc_core is built in
	{Dir: "kernel/drivers/x", Name: "broken", Depends: []string{"ghost"}},
}

var builtin = []string{"kernel/drivers/mmc/core/mmc_core", "kernel/drivers/mmc/core/mmc_block"}

func index(mods []*kmod.Module) map[string]int {
	at := map[string]int{}
	for i, m := range mods {
		at[m.Name] = i
	}
	return at
}

// Every compression a distribution ships modules in resolves the same
// closure from .modinfo alone (no modules.dep, as in a Debian package):
// dependencies first, built-in modules left out, names normalised, and
// the module read back uncompressed.
func TestResolveSynthetic(t *testing.T) {
	for _, ext := range []string{"", ".xz", ".zst", ".gz"} {
		t.Run("ko"+ext, func(t *testing.T) {
			dir := t.TempDir()
			kmodtest.WriteDir(t, dir, kmodtest.Files(t, release, ext, builtin, synthetic...))
			tr, err := kmod.Open(os.DirFS(dir), release)
			if err != nil {
				t.Fatal(err)
			}
			if tr.HasModulesDep || tr.Len() != len(synthetic) || !tr.Builtin("mmc-block") || !tr.Has("cdc_acm") || tr.Has("nvme") {
				t.Fatalf("index: deps file %v, %d modules, builtin mmc_block %v", tr.HasModulesDep, tr.Len(), tr.Builtin("mmc_block"))
			}
			mods, err := tr.Resolve("ext4", "cdc-acm", "mmc_block", "r8152", "sdhci_iproc", "usbnet")
			if err != nil {
				t.Fatal(err)
			}
			at := index(mods)
			if len(mods) != 10 {
				t.Fatalf("closure %v", at)
			}
			for mod, deps := range map[string][]string{"ext4": {"mbcache", "jbd2", "crc16"}, "r8152": {"usbnet", "mii"}, "usbnet": {"mii"}, "cdc_acm": {"usbcore"}} {
				for _, d := range deps {
					if at[d] >= at[mod] {
						t.Errorf("%s loads at %d, before its dependency %s at %d", mod, at[mod], d, at[d])
					}
				}
			}
			if _, ok := at["mmc_block"]; ok {
				t.Error("a built-in module is in the load list")
			}
			r := mods[at["r8152"]]
			if len(r.Firmware) != 2 || r.Firmware[0] != "rtl_nic/rtl8153a-4.fw" {
				t.Errorf("r8152 firmware %v", r.Firmware)
			}
			acm := mods[at["cdc_acm"]]
			if acm.Path != "kernel/drivers/usb/class/cdc-acm.ko"+ext || acm.InstallPath() != "kernel/drivers/usb/class/cdc-acm.ko" {
				t.Errorf("cdc_acm at %s, installs at %s", acm.Path, acm.InstallPath())
			}
			data, err := tr.Read(acm)
			if err != nil || !bytes.Equal(data, synthetic[7].Bytes(release)) {
				t.Fatalf("cdc_acm read back (%d bytes, %v) differs from the module", len(data), err)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	dir := t.TempDir()
	mods := append(synthetic, kmodtest.Module{Dir: "kernel/y", Name: "foreign", Vermagic: "6.6.51+rpt-rpi-v8 SMP preempt mod_unload aarch64"})
	kmodtest.WriteDir(t, dir, kmodtest.Files(t, release, ".xz", builtin, mods...))
	tr, err := kmod.Open(os.DirFS(dir), release)
	if err != nil {
		t.Fatal(err)
	}
	var missing *kmod.MissingError
	_, err = tr.Resolve("usbnet", "nvme")
	if !errors.As(err, &missing) || missing.Name != "nvme" || missing.NeededBy != "" || !strings.Contains(err.Error(), "no module nvme") {
		t.Errorf("a requested module the kernel lacks: %v", err)
	}
	_, err = tr.Resolve("broken")
	if !errors.As(err, &missing) || missing.Name != "ghost" || missing.NeededBy != "broken" || !strings.Contains(err.Error(), "which broken needs") {
		t.Errorf("a dependency the kernel lacks: %v", err)
	}
	if _, err := tr.Resolve("foreign"); err == nil || !strings.Contains(err.Error(), `built for kernel "6.6.51+rpt-rpi-v8"`) {
		t.Errorf("a module of another kernel: %v", err)
	}
	if _, err := kmod.Open(os.DirFS(dir), "6.6.51+rpt-rpi-v8"); err == nil || !strings.Contains(err.Error(), release) {
		t.Errorf("a release without modules: %v", err)
	}
	cycle := t.TempDir()
	kmodtest.WriteDir(t, cycle, kmodtest.Files(t, release, "", nil,
		kmodtest.Module{Dir: "k", Name: "a", Depends: []string{"b"}}, kmodtest.Module{Dir: "k", Name: "b", Depends: []string{"a"}}))
	ct, err := kmod.Open(os.DirFS(cycle), release)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ct.Resolve("a"); err == nil || !strings.Contains(err.Error(), "a -> b -> a") {
		t.Errorf("a dependency cycle: %v", err)
	}
}

// With modules.dep (Raspberry Pi OS ships one), depmod's word wins over
// .modinfo, and usrmerge's lib -> usr/lib is followed.
func TestModulesDepAndUsrMerge(t *testing.T) {
	files := kmodtest.Files(t, release, ".xz", builtin, synthetic...)
	mfs := fstest.MapFS{}
	for p, data := range files {
		mfs["usr/"+p] = &fstest.MapFile{Data: data, Mode: 0o644}
	}
	dep := kmodtest.ModulesDep(".xz", kmodtest.Module{Dir: "kernel/fs/ext4", Name: "ext4", Depends: []string{"jbd2"}}, synthetic[1])
	mfs[path.Join("usr/lib/modules", release, "modules.dep")] = &fstest.MapFile{Data: dep, Mode: 0o644}
	tr, err := kmod.Open(mfs, release)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := tr.Resolve("ext4")
	if err != nil {
		t.Fatal(err)
	}
	if !tr.HasModulesDep || len(mods) != 2 || mods[0].Name != "jbd2" || mods[1].Name != "ext4" {
		t.Fatalf("modules.dep not followed: %v", index(mods))
	}
	if rels, err := kmod.Releases(mfs); err != nil || len(rels) != 1 || rels[0] != release {
		t.Fatalf("releases %v %v", rels, err)
	}
}

// Debian's own arm64 kernel package: release from the kernel image's
// banner, dependencies from .modinfo (the package has no modules.dep).
func TestDebianKernelPackage(t *testing.T) {
	deb := aptfetchtest.KernelDeb(t)
	b, err := base.Open(context.Background(), deb, base.Options{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	fsys := b.Root.FS()
	rels, err := kmod.Releases(fsys)
	if err != nil || len(rels) != 1 {
		t.Fatalf("releases %v %v", rels, err)
	}
	kernel, err := fsys.Open("boot/vmlinuz-" + rels[0])
	if err != nil {
		t.Fatal(err)
	}
	got, err := kmod.KernelRelease(kernel)
	kernel.Close()
	if err != nil || got != rels[0] {
		t.Fatalf("kernel image says release %q (%v), modules are %s", got, err, rels[0])
	}
	tr, err := kmod.Open(fsys, got)
	if err != nil {
		t.Fatal(err)
	}
	if tr.HasModulesDep || tr.Len() < 1000 || !tr.Builtin("mmc_block") {
		t.Fatalf("%s: modules.dep %v, %d modules", tr.Dir, tr.HasModulesDep, tr.Len())
	}
	mods, err := tr.Resolve("ext4", "r8152", "virtio_net", "cdc-acm")
	if err != nil {
		t.Fatal(err)
	}
	at := index(mods)
	for _, d := range []string{"jbd2", "mbcache", "crc16"} {
		if i, ok := at[d]; !ok || i > at["ext4"] {
			t.Errorf("ext4's dependency %s: at %d (ext4 at %d)", d, i, at["ext4"])
		}
	}
	if fw := mods[at["r8152"]].Firmware; len(fw) == 0 || !strings.HasPrefix(fw[0], "rtl_nic/") {
		t.Errorf("r8152 firmware %v", fw)
	}
	data, err := tr.Read(mods[at["ext4"]])
	if err != nil || !bytes.HasPrefix(data, []byte("\x7fELF")) {
		t.Fatalf("ext4.ko: %v", err)
	}
	if _, err := fs.Stat(fsys, path.Join(tr.Dir, mods[at["ext4"]].Path)); err != nil {
		t.Fatal(err)
	}
}
