package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/netboot/tftp"
	"github.com/lekiwi/heartbeat/netboot/tftp/tftptest"
)

// BenchmarkTFTPThroughputVsDnsmasq fetches the same 30 MB file at blksize
// 1468 with the same client (curl) from netboot/tftp and from dnsmasq's TFTP
// server (Debian dnsmasq-base), alternately within each iteration, over
// loopback, and reports both throughputs and their ratio (goal ≥ 1).
//
//	go test -tags libsqlite3 -run '^$' -bench TFTPThroughputVsDnsmasq -benchtime 3x ./testbench/bench
//
// dnsmasq cannot move its TFTP server off port 69, hence root; it listens on
// a loopback address of its own.
func BenchmarkTFTPThroughputVsDnsmasq(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: dnsmasq's TFTP server only listens on port 69")
	}
	dnsmasq, err := exec.LookPath("dnsmasq")
	if err != nil {
		b.Skip("dnsmasq not installed (Debian dnsmasq-base)")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Skip("curl not installed (Debian curl)")
	}
	const size = 30 << 20
	dir := b.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		b.Fatal(err)
	}
	content := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{7})
	_, _ = rng.Read(content)
	want := sha256.Sum256(content)
	for name, data := range map[string][]byte{"boot.img": content, "ready.txt": []byte("ready")} {
		if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Ours, serving the same directory.
	files, err := tftp.OpenDir(root)
	if err != nil {
		b.Fatal(err)
	}
	defer files.Close()
	srv, err := tftp.New(tftp.Config{Resolver: files})
	if err != nil {
		b.Fatal(err)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, conn) }()
	defer func() { cancel(); <-served }()
	ours := conn.LocalAddr().(*net.UDPAddr).AddrPort()

	// dnsmasq on port 69 of a loopback address unlikely to be in use.
	dnsAddr := netip.AddrFrom4([4]byte{127, 69, byte(os.Getpid() >> 8), byte(os.Getpid())})
	cmd := exec.CommandContext(ctx, dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--enable-tftp", "--tftp-root="+root, "--listen-address="+dnsAddr.String(), "--bind-interfaces",
		"--user=root", "--group=root", "--pid-file=", "--log-facility=-", "--quiet-tftp")
	var dnsLog bytes.Buffer
	cmd.Stdout, cmd.Stderr = &dnsLog, &dnsLog
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting dnsmasq: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	theirs := netip.AddrPortFrom(dnsAddr, 69)

	// Both ready, both negotiating 1468.
	for _, s := range []netip.AddrPort{ours, theirs} {
		c := tftptest.Client{Server: s, Timeout: 200 * time.Millisecond, Retries: 1}
		var res tftptest.Result
		for attempt := 0; ; attempt++ {
			if res, err = c.Probe(ctx, "ready.txt"); err == nil {
				break
			}
			if attempt == 25 {
				b.Fatalf("TFTP server %s not answering: %v\n%s", s, err, dnsLog.String())
			}
		}
		if res.BlockSize != 1468 {
			b.Fatalf("%s negotiated blksize %d, want 1468", s, res.BlockSize)
		}
	}

	// One client for both servers; TFTP_BENCH_CLIENT=busybox swaps curl for
	// busybox tftp to see how much of the figure is the client's.
	client := func(server netip.AddrPort, out string) *exec.Cmd {
		return exec.CommandContext(ctx, curl, "-sS", "--tftp-blksize", "1468", "-o", out, fmt.Sprintf("tftp://%s/boot.img", server))
	}
	clientName := "curl"
	if os.Getenv("TFTP_BENCH_CLIENT") == "busybox" {
		clientName = "busybox tftp"
		client = func(server netip.AddrPort, out string) *exec.Cmd {
			return exec.CommandContext(ctx, "busybox", "tftp", "-g", "-b", "1468", "-r", "boot.img", "-l", out,
				server.Addr().String(), fmt.Sprint(server.Port()))
		}
	}
	// Wall time depends on whatever else the machine runs; the server's own
	// CPU time per file is reported too, as the steadier comparison.
	serverCPU := func(server netip.AddrPort) time.Duration {
		if server == ours {
			return selfCPU(b)
		}
		return procCPU(b, cmd.Process.Pid)
	}
	var oursCPU, theirsCPU time.Duration
	fetch := func(server netip.AddrPort) time.Duration {
		out := filepath.Join(dir, "out.img")
		_ = os.Remove(out)
		c := client(server, out)
		cpu0 := serverCPU(server)
		start := time.Now()
		msg, err := c.CombinedOutput()
		elapsed := time.Since(start)
		if server == ours {
			oursCPU += serverCPU(server) - cpu0
		} else {
			theirsCPU += serverCPU(server) - cpu0
		}
		if err != nil {
			b.Fatalf("%s from %s: %v\n%s", clientName, server, err, msg)
		}
		got, err := os.ReadFile(out)
		if err != nil || sha256.Sum256(got) != want {
			b.Fatalf("%s from %s: %d bytes that are not the served file (%v)", clientName, server, len(got), err)
		}
		b.Logf("%s from %s: %.3f s", clientName, server, elapsed.Seconds())
		return elapsed
	}

	var oursTotal, theirsTotal time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 { // alternate who goes first, so neither always gets the warmer cache
			oursTotal += fetch(ours)
			theirsTotal += fetch(theirs)
		} else {
			theirsTotal += fetch(theirs)
			oursTotal += fetch(ours)
		}
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(oursTotal), "netboot_MB/s")
	b.ReportMetric(mbps(theirsTotal), "dnsmasq_MB/s")
	b.ReportMetric(theirsTotal.Seconds()/oursTotal.Seconds(), "ratio")
	b.ReportMetric(oursCPU.Seconds()/float64(b.N), "netboot_cpu_s/file")
	b.ReportMetric(theirsCPU.Seconds()/float64(b.N), "dnsmasq_cpu_s/file")
	b.Logf("30 MB at blksize 1468 with %s, %d runs each: netboot/tftp %.1f MB/s (%.2f s/file), dnsmasq %.1f MB/s (%.2f s/file), ratio %.2f",
		clientName, b.N, mbps(oursTotal), oursTotal.Seconds()/float64(b.N), mbps(theirsTotal), theirsTotal.Seconds()/float64(b.N), theirsTotal.Seconds()/oursTotal.Seconds())
	b.Logf("server CPU per file: netboot/tftp %.3f s, dnsmasq %.3f s", oursCPU.Seconds()/float64(b.N), theirsCPU.Seconds()/float64(b.N))
}

// selfCPU is this process's user+system CPU time (the in-process server;
// the client runs in a child and is not counted).
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is pid's user+system CPU time from /proc/pid/stat (clock ticks,
// 100 per second on Linux).
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line.
	i := bytes.LastIndexByte(raw, ')')
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		b.Fatalf("short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("parsing /proc/%d/stat: %v %v", pid, err1, err2)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond
}
