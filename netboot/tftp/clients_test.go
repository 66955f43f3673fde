package tftp_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/netboot/tftp"
)

// Third-party TFTP clients against the server over loopback: tftp-hpa (the
// reference client; its 5.2 client negotiates no options, so it gets
// 512-byte blocks), busybox tftp and curl (both ask for blksize 1468).

func lookTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (Debian package %s)", name, pkg)
	}
	return p
}

func runTool(t *testing.T, dir string, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	return cmd.CombinedOutput()
}

func realClientFiles() map[string][]byte {
	return map[string][]byte{
		"1a2b3c4d/config.txt": configFor("1a2b3c4d"),
		"5e6f7a8b/config.txt": configFor("5e6f7a8b"),
	}
}

func TestTFTPHPAClient(t *testing.T) {
	bin := lookTool(t, "tftp", "tftp-hpa")
	h := startServer(t, realClientFiles(), nil)
	dir := t.TempDir()
	port := strconv.Itoa(int(h.addr.Port()))
	for _, serial := range []string{"1a2b3c4d", "5e6f7a8b"} {
		out, err := runTool(t, dir, bin, "-m", "binary", "127.0.0.1", port, "-c", "get", serial+"/config.txt", serial+".txt")
		if err != nil {
			t.Fatalf("tftp get %s/config.txt: %v\n%s", serial, err, out)
		}
		got, err := os.ReadFile(filepath.Join(dir, serial+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, configFor(serial)) {
			t.Fatalf("tftp-hpa got %d bytes for %s, not that serial's %d-byte config.txt", len(got), serial, len(configFor(serial)))
		}
		if tr := h.next(t); tr.Result != tftp.ResultCompleted || tr.Serial != serial || tr.BlockSize != 512 {
			t.Fatalf("report %+v, want completed at 512 (tftp-hpa negotiates no options)", tr)
		}
	}
	// Traversal attempts fail and write nothing useful.
	for _, name := range []string{"../../../../etc/passwd", "/etc/passwd", "1a2b3c4d/../../etc/hostname"} {
		out, _ := runTool(t, dir, bin, "-m", "binary", "127.0.0.1", port, "-c", "get", name, "stolen")
		if !bytes.Contains(out, []byte("Error code")) {
			t.Errorf("tftp get %q: output %q, want a TFTP error", name, out)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "stolen")); err == nil && len(b) > 0 {
			t.Errorf("tftp get %q wrote %d bytes", name, len(b))
		}
		if tr := h.next(t); tr.Result != tftp.ResultRejected {
			t.Errorf("%q: report %+v, want rejected", name, tr)
		}
	}
}

func TestBusyboxClientBlockSize1468(t *testing.T) {
	bin := lookTool(t, "busybox", "busybox")
	if out, _ := runTool(t, "", bin, "tftp", "--help"); !bytes.Contains(out, []byte("-b SIZE")) {
		t.Skip("this busybox tftp has no -b (blksize) option")
	}
	h := startServer(t, realClientFiles(), nil)
	dir := t.TempDir()
	out, err := runTool(t, dir, bin, "tftp", "-g", "-b", "1468", "-r", "5e6f7a8b/config.txt", "-l", "out.txt", "127.0.0.1", strconv.Itoa(int(h.addr.Port())))
	if err != nil {
		t.Fatalf("busybox tftp: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "out.txt"))
	if err != nil || !bytes.Equal(got, configFor("5e6f7a8b")) {
		t.Fatalf("busybox got %d bytes (%v), want that serial's config.txt", len(got), err)
	}
	if tr := h.next(t); tr.Result != tftp.ResultCompleted || tr.BlockSize != 1468 {
		t.Fatalf("report %+v, want completed at blksize 1468", tr)
	}
}

func TestCurlClientBlockSize1468(t *testing.T) {
	bin := lookTool(t, "curl", "curl")
	if out, _ := runTool(t, "", bin, "--version"); !bytes.Contains(out, []byte(" tftp")) {
		t.Skip("this curl has no TFTP support")
	}
	h := startServer(t, realClientFiles(), nil)
	dir := t.TempDir()
	url := "tftp://127.0.0.1:" + strconv.Itoa(int(h.addr.Port())) + "/1a2b3c4d/config.txt"
	out, err := runTool(t, dir, bin, "-sS", "--tftp-blksize", "1468", "-o", "out.txt", url)
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", url, err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "out.txt"))
	if err != nil || !bytes.Equal(got, configFor("1a2b3c4d")) {
		t.Fatalf("curl got %d bytes (%v), want that serial's config.txt", len(got), err)
	}
	if tr := h.next(t); tr.Result != tftp.ResultCompleted || tr.BlockSize != 1468 || tr.Serial != "1a2b3c4d" {
		t.Fatalf("report %+v, want completed at blksize 1468", tr)
	}
}
