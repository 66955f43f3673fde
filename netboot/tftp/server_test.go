package tftp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lekiwi/heartbeat/netboot/tftp"
	"github.com/lekiwi/heartbeat/netboot/tftp/tftptest"
)

// memFiles serves "<serial>/<file>" from a map; bare requests use key "/<file>".
// It records every Open so tests can prove what the server asked for.
type memFiles struct {
	mu    sync.Mutex
	files map[string][]byte
	opens []string
}

func (m *memFiles) Open(_ context.Context, serial, file string, _ netip.AddrPort) (io.ReaderAt, int64, error) {
	key := serial + "/" + file
	m.mu.Lock()
	defer m.mu.Unlock()
	m.opens = append(m.opens, key)
	b, ok := m.files[key]
	if !ok {
		return nil, 0, fmt.Errorf("no %q for serial %q: %w", file, serial, fs.ErrNotExist)
	}
	return bytes.NewReader(b), int64(len(b)), nil
}

func (m *memFiles) opened() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.opens...)
}

// configFor makes a per-serial config.txt larger than a few blocks, so
// transfers cross block boundaries.
func configFor(serial string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# generated for %s\n[all]\narm_64bit=1\nkernel=kernel8.img\ninitramfs initramfs8 followkernel\n", serial)
	for i := 0; b.Len() < 5000; i++ {
		fmt.Fprintf(&b, "# padding line %d for %s\n", i, serial)
	}
	return []byte(b.String())
}

type harness struct {
	addr      netip.AddrPort
	reg       *prometheus.Registry
	files     *memFiles
	transfers chan tftp.Transfer
}

func startServer(t *testing.T, files map[string][]byte, tweak func(*tftp.Config)) *harness {
	t.Helper()
	h := &harness{reg: prometheus.NewRegistry(), files: &memFiles{files: files}, transfers: make(chan tftp.Transfer, 100)}
	cfg := tftp.Config{
		Resolver:   h.files,
		Registerer: h.reg,
		Timeout:    500 * time.Millisecond,
		Retries:    3,
		OnTransfer: func(tr tftp.Transfer) { h.transfers <- tr },
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := tftp.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	h.addr = conn.LocalAddr().(*net.UDPAddr).AddrPort()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return 10 s after cancel")
		}
	})
	return h
}

func (h *harness) client() tftptest.Client {
	return tftptest.Client{Server: h.addr, Timeout: 500 * time.Millisecond, Retries: 3}
}

// next waits for the next finished transfer report.
func (h *harness) next(t *testing.T) tftp.Transfer {
	t.Helper()
	select {
	case tr := <-h.transfers:
		return tr
	case <-time.After(5 * time.Second):
		t.Fatal("no transfer reported within 5 s")
		return tftp.Transfer{}
	}
}

// drain waits for n transfer reports, so metrics are final.
func (h *harness) drain(t *testing.T, n int) []tftp.Transfer {
	t.Helper()
	var out []tftp.Transfer
	for range n {
		out = append(out, h.next(t))
	}
	return out
}

// metric sums the samples of a metric family whose labels include want.
func (h *harness) metric(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func (h *harness) results(t *testing.T) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, r := range []string{"completed", "probe", "failed", "not_found", "rejected"} {
		out[r] = h.metric(t, "lekiwi_netboot_tftp_transfers_total", map[string]string{"result": r})
	}
	return out
}

func TestSimulatedPiBootloaderProbeThenFetch(t *testing.T) {
	const serial = "1a2b3c4d"
	want := configFor(serial)
	h := startServer(t, map[string][]byte{serial + "/config.txt": want, "5e6f7a8b/config.txt": configFor("5e6f7a8b")}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	got, res, err := h.client().Fetch(ctx, serial+"/config.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes that differ from this serial's %d-byte config.txt", len(got), len(want))
	}
	if res.TSize != int64(len(want)) || res.BlockSize != 1468 || res.Bytes != int64(len(want)) {
		t.Fatalf("result %+v, want tsize=bytes=%d blksize=1468", res, len(want))
	}

	// The probe's report may arrive after the transfer's: the server ends
	// the probe concurrently with the real request.
	probe, transfer := h.next(t), h.next(t)
	if probe.Result != tftp.ResultProbe {
		probe, transfer = transfer, probe
	}
	if probe.Result != tftp.ResultProbe || probe.Bytes != 0 || probe.Size != int64(len(want)) || probe.Err == nil {
		t.Errorf("first report %+v, want a probe of %d bytes with the client's error", probe, len(want))
	}
	if transfer.Result != tftp.ResultCompleted || transfer.Serial != serial || transfer.File != "config.txt" ||
		transfer.Kind != tftp.KindConfig || transfer.Bytes != int64(len(want)) || transfer.BlockSize != 1468 ||
		transfer.Err != nil || !transfer.Client.Addr().IsLoopback() || transfer.Duration <= 0 {
		t.Errorf("second report %+v, want a completed %d-byte config.txt for %s at blksize 1468", transfer, len(want), serial)
	}
	r := h.results(t)
	if r["probe"] != 1 || r["completed"] != 1 || r["failed"] != 0 || r["not_found"] != 0 || r["rejected"] != 0 {
		t.Errorf("transfer results %v, want 1 probe + 1 completed and nothing else", r)
	}
	if s := h.metric(t, "lekiwi_netboot_tftp_transfers_started_total", map[string]string{"kind": "config"}); s != 2 {
		t.Errorf("started %v, want 2 (probe and transfer)", s)
	}
	if b := h.metric(t, "lekiwi_netboot_tftp_sent_bytes_total", map[string]string{"kind": "config"}); b != float64(len(want)) {
		t.Errorf("sent bytes %v, want %d", b, len(want))
	}
	if d := h.metric(t, "lekiwi_netboot_tftp_transfer_duration_seconds", map[string]string{"kind": "config"}); d != 1 {
		t.Errorf("duration observations %v, want 1", d)
	}
	if f := h.metric(t, "lekiwi_netboot_tftp_transfers_in_flight", nil); f != 0 {
		t.Errorf("in flight %v after the transfers ended", f)
	}
}

func TestBlockSizeCappedAndBoundaries(t *testing.T) {
	// Sizes around block boundaries: an exact multiple needs a final empty
	// DATA packet.
	files := map[string][]byte{}
	sizes := []int{0, 1, 1467, 1468, 1469, 2 * 1468, 100_000}
	for _, n := range sizes {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7 + n)
		}
		files[fmt.Sprintf("0000abcd/f%d.bin", n)] = b
	}
	h := startServer(t, files, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := h.client()
	c.BlockSize = 8192 // more than the station allows
	for _, n := range sizes {
		name := fmt.Sprintf("0000abcd/f%d.bin", n)
		got, res, err := c.Fetch(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got, files[name]) {
			t.Fatalf("%s: content differs (%d bytes, want %d)", name, len(got), n)
		}
		if res.BlockSize != 1468 {
			t.Fatalf("%s: negotiated blksize %d, want the 1468 cap", name, res.BlockSize)
		}
	}
	for _, tr := range h.drain(t, 2*len(sizes)) {
		if tr.Result == tftp.ResultCompleted && (tr.BlockSize != 1468 || tr.Retransmits != 0) {
			t.Errorf("report %+v, want blksize 1468 and no retransmits on loopback", tr)
		}
	}
	if r := h.results(t); r["completed"] != float64(len(sizes)) || r["probe"] != float64(len(sizes)) || r["failed"] != 0 {
		t.Errorf("results %v, want %d completed and %d probes", r, len(sizes), len(sizes))
	}
}

func TestSmallerBlockSizeHonoured(t *testing.T) {
	h := startServer(t, map[string][]byte{"1a2b3c4d/cmdline.txt": configFor("x")}, nil)
	c := h.client()
	c.BlockSize = 1024
	var buf bytes.Buffer
	res, err := c.Get(context.Background(), "1a2b3c4d/cmdline.txt", &buf)
	if err != nil {
		t.Fatal(err)
	}
	if res.BlockSize != 1024 || !bytes.Equal(buf.Bytes(), configFor("x")) {
		t.Fatalf("blksize %d, %d bytes; want 1024 and the file", res.BlockSize, buf.Len())
	}
	if tr := h.next(t); tr.BlockSize != 1024 || tr.Kind != tftp.KindCmdline || tr.Result != tftp.ResultCompleted {
		t.Fatalf("report %+v", tr)
	}
}

func TestPerSerialAndBareRequests(t *testing.T) {
	h := startServer(t, map[string][]byte{
		"1a2b3c4d/config.txt": []byte("serial one\n"),
		"5e6f7a8b/config.txt": []byte("serial two\n"),
		"/bootcode.bin":       []byte("bare firmware"),
	}, nil)
	ctx := context.Background()
	for name, want := range map[string]string{
		"1a2b3c4d/config.txt": "serial one\n",
		"5e6f7a8b/config.txt": "serial two\n",
		"bootcode.bin":        "bare firmware",
	} {
		got, _, err := h.client().Fetch(ctx, name)
		if err != nil || string(got) != want {
			t.Errorf("%s: got %q, %v; want %q", name, got, err, want)
		}
	}
	// A serial the station has nothing for: not found, and reported as such.
	_, _, err := h.client().Fetch(ctx, "99999999/config.txt")
	var se *tftptest.ServerError
	if !errors.As(err, &se) || se.Code != 1 {
		t.Fatalf("unknown serial: %v, want TFTP error 1 (file not found)", err)
	}
	h.drain(t, 3*2+1)
	if r := h.results(t); r["not_found"] != 1 || r["completed"] != 3 || r["probe"] != 3 {
		t.Errorf("results %v", r)
	}
}

func TestTraversalAndInvalidNamesRejected(t *testing.T) {
	h := startServer(t, map[string][]byte{"1a2b3c4d/config.txt": []byte("ok")}, nil)
	bad := []string{
		"../etc/passwd", "/etc/passwd", "1a2b3c4d/../../etc/passwd", "1a2b3c4d/./config.txt",
		`1a2b3c4d\config.txt`, `..\..\boot.ini`, "1a2b3c4d//config.txt", strings.Repeat("a/", 200) + "x",
	}
	for _, name := range bad {
		var buf bytes.Buffer
		_, err := h.client().Get(context.Background(), name, &buf)
		var se *tftptest.ServerError
		if !errors.As(err, &se) || buf.Len() != 0 {
			t.Errorf("%q: err %v with %d bytes, want a TFTP error and no data", name, err, buf.Len())
		}
		if tr := h.next(t); tr.Result != tftp.ResultRejected || tr.Kind != tftp.KindInvalid {
			t.Errorf("%q: report %+v, want rejected", name, tr)
		}
	}
	if opens := h.files.opened(); len(opens) != 0 {
		t.Errorf("resolver was asked for %q; invalid names must never reach it", opens)
	}
	if r := h.results(t); r["rejected"] != float64(len(bad)) {
		t.Errorf("rejected %v, want %d", r["rejected"], len(bad))
	}
}

func TestResolverErrorIsFailureNotNotFound(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv, err := tftp.New(tftp.Config{Registerer: reg, Resolver: tftp.ResolverFunc(
		func(context.Context, string, string, netip.AddrPort) (io.ReaderAt, int64, error) {
			return nil, 0, errors.New("control unreachable")
		})})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()
	defer func() { cancel(); <-done }()
	c := tftptest.Client{Server: conn.LocalAddr().(*net.UDPAddr).AddrPort(), Timeout: 500 * time.Millisecond}
	_, err = c.Get(ctx, "1a2b3c4d/config.txt", io.Discard)
	var se *tftptest.ServerError
	if !errors.As(err, &se) || strings.Contains(se.Message, "control") {
		t.Fatalf("got %v; want a TFTP error that does not leak the internal cause", err)
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := tftp.New(tftp.Config{}); err == nil {
		t.Error("New without a resolver succeeded")
	}
	if _, err := tftp.New(tftp.Config{Resolver: &memFiles{}, MaxBlockSize: 512}); err == nil {
		t.Error("New with MaxBlockSize 512 succeeded; pin/tftp cannot enforce it")
	}
	reg := prometheus.NewRegistry()
	if _, err := tftp.New(tftp.Config{Resolver: &memFiles{}, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tftp.New(tftp.Config{Resolver: &memFiles{}, Registerer: reg}); err == nil {
		t.Error("a second server on the same registry succeeded")
	}
}

// TestCancelStopsServing: after cancel, Serve returns and the port no longer
// answers, even with a transfer whose client went silent mid-way.
func TestCancelStopsServing(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 200_000)
	srv, err := tftp.New(tftp.Config{Resolver: &memFiles{files: map[string][]byte{"/big.bin": big}},
		Timeout: 200 * time.Millisecond, Retries: 2})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := conn.LocalAddr().(*net.UDPAddr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()

	// A client that asks and never acknowledges.
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	if _, err := silent.WriteToUDP([]byte("\x00\x01big.bin\x00octet\x00"), addr); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	_ = silent.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, _, err := silent.ReadFromUDP(buf); err != nil {
		t.Fatalf("no first DATA block: %v", err)
	}
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still running 5 s after cancel")
	}
	t.Logf("Serve returned %v after cancel", time.Since(start))
	c := tftptest.Client{Server: addr.AddrPort(), Timeout: 100 * time.Millisecond, Retries: 1}
	if _, err := c.Get(context.Background(), "big.bin", io.Discard); err == nil {
		t.Fatal("server still answers after cancel")
	}
}
