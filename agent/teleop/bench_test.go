package teleop

// Cost of teleop detection on a robot. Run:
//
//	go test ./agent/teleop -run '^$' -bench . -benchmem
//
// "cpu%@1Hz" is the share of one core that polling once a second costs
// (ns/op ÷ 10⁷); "event-bytes" is the JSON size of one teleop event
// payload, before the protocol envelope. Service watch is signal-driven and
// costs nothing between unit changes, so it adds no steady-state figure.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeBusyTable writes a /proc/net/tcp with n sockets, two of them
// teleop sessions from 192.168.1.10 and the rest unrelated connections.
func writeBusyTable(b *testing.B, dir string, n int) {
	var sb strings.Builder
	sb.WriteString("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
	line := func(i int, local, remote string, st int) {
		fmt.Fprintf(&sb, "%4d: %s %s %02X 00000000:00000000 00:00000000 00000000  1000        0 %d 1 0000000000000000 100 0 0 10 0\n", i, local, remote, st, 10000+i)
	}
	line(0, "00000000:15B3", "00000000:0000", 0x0A)
	line(1, "2A01A8C0:15B3", "0A01A8C0:C35C", 0x01)
	line(2, "2A01A8C0:15B4", "0A01A8C0:C35E", 0x01)
	for i := 3; i < n; i++ {
		line(i, fmt.Sprintf("2A01A8C0:%04X", 20000+i), fmt.Sprintf("1401A8C0:%04X", 40000+i), 0x01)
	}
	if err := os.MkdirAll(filepath.Join(dir, "net"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "net", "tcp"), []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
}

func reportCPU(b *testing.B) {
	nsPerOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(nsPerOp/1e7, "cpu%@1Hz")
}

// BenchmarkPoll300Sockets: a 300-socket table with a session in progress,
// counters faked (parsing and debouncing only).
func BenchmarkPoll300Sockets(b *testing.B) {
	dir := b.TempDir()
	writeBusyTable(b, dir, 300)
	d, err := New(Config{Ports: []Port{{5555, "zmq-cmd"}, {5556, "zmq-observations"}}, Proc: dir,
		LocalAddrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Counters:   &fakeCounters{bytes: map[uint64]Bytes{10001: {Received: 1}, 10002: {Received: 2}}}})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := d.Poll(ctx); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b)
}

// BenchmarkPollRealProc: this machine's real /proc/net/tcp{,6} and udp
// tables and real sock_diag lookups, with a live loopback teleop session
// (client on 127.0.0.2) and a connected UDP socket (the WebRTC path).
func BenchmarkPollRealProc(b *testing.B) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).AddrPort().Port()
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	conn, err := dialer.Dial("tcp4", ln.Addr().String())
	if err != nil {
		b.Skipf("dial from 127.0.0.2: %v", err)
	}
	defer conn.Close()
	d, err := New(Config{Ports: []Port{{port, "zmq-cmd"}}, StartAfter: time.Nanosecond,
		LocalAddrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	sockets := 0
	for _, t := range []string{"tcp", "tcp6", "udp", "udp6"} {
		data, _ := os.ReadFile("/proc/net/" + t)
		sockets += strings.Count(string(data), "\n") - 1
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := d.Poll(ctx); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b)
	b.ReportMetric(float64(sockets), "sockets")
	if _, ok := d.Active(); !ok {
		b.Fatal("the live session was not detected")
	}
}

// BenchmarkEventSize reports the bytes of a teleop event (kind, message
// and data as JSON) — what a session costs on the wire, twice per session.
func BenchmarkEventSize(b *testing.B) {
	tr := Transition{Kind: Started, Session: Session{Operator: netip.MustParseAddr("192.168.100.200"), Since: time.Now()}}
	var n int
	for b.Loop() {
		data, err := json.Marshal(tr.Event())
		if err != nil {
			b.Fatal(err)
		}
		n = len(data)
	}
	b.ReportMetric(float64(n), "event-bytes")
}
