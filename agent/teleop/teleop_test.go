package teleop

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
)

// fakeProc is a procfs root whose socket tables the test swaps per step.
type fakeProc struct{ dir string }

func newFakeProc(t *testing.T) *fakeProc {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &fakeProc{dir: dir}
}

// set installs fixture files (names under testdata, "" for an absent
// table) as net/tcp and net/tcp6.
func (p *fakeProc) set(t *testing.T, tcp, tcp6 string) {
	t.Helper()
	for dst, src := range map[string]string{"tcp": tcp, "tcp6": tcp6} {
		path := filepath.Join(p.dir, "net", dst)
		if src == "" {
			os.Remove(path)
			continue
		}
		data, err := os.ReadFile(filepath.Join("testdata", src))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeCounters serves byte counters by inode.
type fakeCounters struct {
	bytes map[uint64]Bytes
	err   error
}

func (f *fakeCounters) TCPBytes(_, _ netip.AddrPort, inode uint64) (Bytes, bool, error) {
	if f.err != nil {
		return Bytes{}, false, f.err
	}
	b, ok := f.bytes[inode]
	return b, ok, nil
}
func (f *fakeCounters) Close() error { return nil }

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func lekiwiPorts(t *testing.T) []Port {
	p, err := profiles.Load("lekiwi")
	if err != nil {
		t.Fatal(err)
	}
	return FromProfile(p.Teleop).Ports
}

func TestFromProfile(t *testing.T) {
	for _, tt := range []struct {
		profile string
		ports   []uint16
	}{
		{"lekiwi", []uint16{5555, 5556}},
		{"xle", []uint16{8443, 8442, 8554}},
	} {
		p, err := profiles.Load(tt.profile)
		if err != nil {
			t.Fatal(err)
		}
		c := FromProfile(p.Teleop)
		var got []uint16
		for _, port := range c.Ports {
			got = append(got, port.Number)
			if port.Name == "" {
				t.Errorf("%s: port %d has no name", tt.profile, port.Number)
			}
		}
		if len(got) != len(tt.ports) {
			t.Fatalf("%s: ports %v, want %v", tt.profile, got, tt.ports)
		}
		for i := range got {
			if got[i] != tt.ports[i] {
				t.Fatalf("%s: ports %v, want %v", tt.profile, got, tt.ports)
			}
		}
		if c.StopAfter != p.Teleop.IdleTimeout {
			t.Errorf("%s: StopAfter %s, want the profile's idle timeout %s", tt.profile, c.StopAfter, p.Teleop.IdleTimeout)
		}
	}
}

// TestDebounceOnFixtures steps a fake clock through fixture tables.
func TestDebounceOnFixtures(t *testing.T) {
	type step struct {
		at         time.Duration
		tcp, tcp6  string
		want       Kind // 0: no transition
		operator   string
		since      time.Duration
		ended      time.Duration
		activePeer int // peers in the active session after the step (-1: not active)
	}
	tests := []struct {
		name  string
		ports func(*testing.T) []Port
		steps []step
	}{
		{
			name:  "lekiwi session starts after 3s of presence and stops after 10s of absence",
			ports: lekiwiPorts,
			steps: []step{
				{at: 0, tcp: "tcp_lekiwi_idle", activePeer: -1},
				{at: 1 * time.Second, tcp: "tcp_lekiwi_driven", activePeer: -1},
				{at: 2 * time.Second, tcp: "tcp_lekiwi_driven", activePeer: -1},
				{at: 4 * time.Second, tcp: "tcp_lekiwi_driven", want: Started, operator: "192.168.1.10", since: 1 * time.Second, activePeer: 2},
				{at: 5 * time.Second, tcp: "tcp_lekiwi_idle", activePeer: 0},
				{at: 13 * time.Second, tcp: "tcp_lekiwi_idle", activePeer: 0},
				{at: 14 * time.Second, tcp: "tcp_lekiwi_idle", want: Stopped, operator: "192.168.1.10", since: 1 * time.Second, ended: 4 * time.Second, activePeer: -1},
				{at: 60 * time.Second, tcp: "tcp_lekiwi_idle", activePeer: -1},
			},
		},
		{
			name:  "interrupted presence restarts the start debounce",
			ports: lekiwiPorts,
			steps: []step{
				{at: 0, tcp: "tcp_lekiwi_driven", activePeer: -1},
				{at: 2 * time.Second, tcp: "tcp_lekiwi_idle", activePeer: -1},
				{at: 3 * time.Second, tcp: "tcp_lekiwi_driven", activePeer: -1},
				{at: 5 * time.Second, tcp: "tcp_lekiwi_driven", activePeer: -1},
				{at: 6 * time.Second, tcp: "tcp_lekiwi_driven", want: Started, operator: "192.168.1.10", since: 3 * time.Second, activePeer: 2},
			},
		},
		{
			name:  "a reconnect within the stop debounce stays one session",
			ports: lekiwiPorts,
			steps: []step{
				{at: 0, tcp: "tcp_lekiwi_driven", activePeer: -1},
				{at: 3 * time.Second, tcp: "tcp_lekiwi_driven", want: Started, operator: "192.168.1.10", since: 0, activePeer: 2},
				{at: 4 * time.Second, tcp: "tcp_lekiwi_idle", activePeer: 0},
				{at: 12 * time.Second, tcp: "tcp_lekiwi_driven", activePeer: 2},
				{at: 21 * time.Second, tcp: "tcp_lekiwi_idle", activePeer: 0},
				{at: 22 * time.Second, tcp: "tcp_lekiwi_idle", want: Stopped, operator: "192.168.1.10", since: 0, ended: 12 * time.Second, activePeer: -1},
			},
		},
		{
			name:  "only local peers never start a session",
			ports: lekiwiPorts,
			steps: []step{
				{at: 0, tcp: "tcp_lekiwi_idle", tcp6: "tcp6_empty", activePeer: -1},
				{at: 10 * time.Second, tcp: "tcp_lekiwi_idle", tcp6: "tcp6_empty", activePeer: -1},
				{at: 100 * time.Second, tcp: "tcp_lekiwi_idle", activePeer: -1},
			},
		},
		{
			name: "xle over tcp6: v4-mapped and IPv6 peers, loopback RTSP viewer ignored",
			ports: func(t *testing.T) []Port {
				p, err := profiles.Load("xle")
				if err != nil {
					t.Fatal(err)
				}
				return FromProfile(p.Teleop).Ports
			},
			steps: []step{
				{at: 0, tcp6: "tcp6_xle_driven", activePeer: -1},
				{at: 3 * time.Second, tcp: "tcp_lekiwi_idle", tcp6: "tcp6_xle_driven", want: Started, operator: "192.168.1.30", since: 0, activePeer: 2},
				{at: 4 * time.Second, tcp6: "tcp6_empty", activePeer: 0},
				{at: 14 * time.Second, tcp6: "tcp6_empty", want: Stopped, operator: "192.168.1.30", since: 0, ended: 3 * time.Second, activePeer: -1},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc := newFakeProc(t)
			clk := &clock{t: t0}
			d, err := New(Config{
				Ports:      tt.ports(t),
				StartAfter: 3 * time.Second,
				StopAfter:  10 * time.Second,
				Proc:       proc.dir,
				LocalAddrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
				Counters:   &fakeCounters{},
				Now:        clk.now,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for i, s := range tt.steps {
				proc.set(t, s.tcp, s.tcp6)
				clk.t = t0.Add(s.at)
				trs, err := d.Poll(context.Background())
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if s.want == 0 {
					if len(trs) != 0 {
						t.Fatalf("step %d (t=%s): unexpected %v", i, s.at, trs)
					}
				} else {
					if len(trs) != 1 || trs[0].Kind != s.want {
						t.Fatalf("step %d (t=%s): transitions %v, want one %s", i, s.at, trs, s.want)
					}
					got := trs[0].Session
					if got.Operator.String() != s.operator || !got.Since.Equal(t0.Add(s.since)) {
						t.Fatalf("step %d: operator %s since %s, want %s since %s", i, got.Operator, got.Since, s.operator, t0.Add(s.since))
					}
					if s.want == Stopped && !got.Ended.Equal(t0.Add(s.ended)) {
						t.Fatalf("step %d: ended %s, want %s", i, got.Ended, t0.Add(s.ended))
					}
				}
				sess, active := d.Active()
				switch {
				case s.activePeer < 0 && active:
					t.Fatalf("step %d: active session %+v, want none", i, sess)
				case s.activePeer >= 0 && !active:
					t.Fatalf("step %d: no active session", i)
				case s.activePeer >= 0 && len(sess.Peers) != s.activePeer:
					t.Fatalf("step %d: %d peers %+v, want %d", i, len(sess.Peers), sess.Peers, s.activePeer)
				}
			}
		})
	}
}

func TestTrafficRate(t *testing.T) {
	proc := newFakeProc(t)
	proc.set(t, "tcp_lekiwi_driven", "")
	clk := &clock{t: t0}
	ctr := &fakeCounters{bytes: map[uint64]Bytes{2001: {Received: 1000, Acked: 5000}, 2002: {Received: 0, Acked: 100000}}}
	d, err := New(Config{Ports: lekiwiPorts(t), StartAfter: time.Second, Proc: proc.dir, Counters: ctr, Now: clk.now,
		LocalAddrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	poll := func(at time.Duration) {
		t.Helper()
		clk.t = t0.Add(at)
		if _, err := d.Poll(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	poll(0)
	poll(time.Second) // started
	ctr.bytes[2001] = Bytes{Received: 1000 + 600, Acked: 5000 + 40}
	ctr.bytes[2002] = Bytes{Received: 0, Acked: 100000 + 80000}
	poll(3 * time.Second)
	s, ok := d.Active()
	if !ok {
		t.Fatal("no session")
	}
	if s.RxBytesPerSec != 300 || s.TxBytesPerSec != 40020 {
		t.Fatalf("rx %.1f tx %.1f B/s, want 300 and 40020", s.RxBytesPerSec, s.TxBytesPerSec)
	}
	ctr.err = errors.New("netlink gone")
	poll(4 * time.Second)
	if s, _ := d.Active(); s.RxBytesPerSec != -1 || s.TxBytesPerSec != -1 {
		t.Fatalf("rates %.1f/%.1f without counters, want -1", s.RxBytesPerSec, s.TxBytesPerSec)
	}
}

func TestTransitionEvent(t *testing.T) {
	tr := Transition{Kind: Stopped, Session: Session{Operator: netip.MustParseAddr("192.168.1.10"), Since: t0, Ended: t0.Add(90 * time.Second)}}
	ev := tr.Event()
	if ev.Kind != protocol.EventTeleopStopped || ev.Validate() != nil {
		t.Fatalf("event %+v", ev)
	}
	var data protocol.TeleopData
	if err := json.Unmarshal(ev.Data, &data); err != nil {
		t.Fatal(err)
	}
	if data.Operator != "192.168.1.10" || !data.Since.Equal(t0) {
		t.Fatalf("data %+v", data)
	}
	if ev.Message != "teleoperation stopped by 192.168.1.10 after 1m30s" {
		t.Fatalf("message %q", ev.Message)
	}
	if ev := (Transition{Kind: Started}).Event(); ev.Kind != protocol.EventTeleopStarted {
		t.Fatalf("kind %q", ev.Kind)
	}
}

func TestNewRejects(t *testing.T) {
	for _, c := range []Config{
		{},
		{Ports: []Port{{Number: 0, Name: "x"}}},
		{Ports: []Port{{Number: 1}}, StartAfter: -1},
	} {
		if d, err := New(c); err == nil {
			d.Close()
			t.Errorf("New(%+v) accepted", c)
		}
	}
}

func TestUnreadableTableIsAnError(t *testing.T) {
	proc := newFakeProc(t)
	if err := os.WriteFile(filepath.Join(proc.dir, "net", "tcp"), []byte("hdr\nnot a socket line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Ports: []Port{{Number: 5555}}, Proc: proc.dir, Counters: &fakeCounters{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Poll(context.Background()); err == nil {
		t.Fatal("poll of a garbage table succeeded")
	}
}

// pollUntil polls every 20 ms until a transition of kind arrives (at most 5 s).
func pollUntil(t *testing.T, d *Detector, kind Kind) Transition {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		trs, err := d.Poll(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, tr := range trs {
			if tr.Kind != kind {
				t.Fatalf("got %s, want %s", tr.Kind, kind)
			}
			return tr
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %s transition within 5 s", kind)
	return Transition{}
}

// TestRealTCPSession runs a real loopback session: a listener on
// 127.0.0.1 (or dual-stack ::), a client bound to 127.0.0.2, which counts
// as remote because only 127.0.0.1 is declared local.
func TestRealTCPSession(t *testing.T) {
	for _, tt := range []struct{ network, addr string }{
		{"tcp4", "127.0.0.1:0"},
		{"tcp", "[::]:0"}, // dual stack: the session shows in tcp6 as ::ffff:127.0.0.x
	} {
		t.Run(tt.network+" "+tt.addr, func(t *testing.T) {
			ln, err := net.Listen(tt.network, tt.addr)
			if err != nil {
				t.Skipf("listen %s: %v", tt.addr, err)
			}
			defer ln.Close()
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			received := make(chan int64, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				n, _ := io.Copy(io.Discard, c)
				c.Close()
				received <- n
			}()
			d, err := New(Config{
				Ports:      []Port{{Number: port, Name: "zmq-cmd"}},
				StartAfter: 100 * time.Millisecond,
				StopAfter:  200 * time.Millisecond,
				LocalAddrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 2 * time.Second}
			before := time.Now()
			conn, err := dialer.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
			if err != nil {
				t.Skipf("dial from 127.0.0.2: %v", err)
			}
			started := pollUntil(t, d, Started)
			if got := started.Session.Operator.String(); got != "127.0.0.2" {
				t.Fatalf("operator %s, want 127.0.0.2", got)
			}
			if started.Session.Since.Before(before) || started.Session.Since.After(time.Now()) {
				t.Fatalf("since %s not within the test", started.Session.Since)
			}
			// Command traffic: the rate comes from sock_diag's counters.
			payload := make([]byte, 20000)
			if _, err := conn.Write(payload); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
			if _, err := d.Poll(context.Background()); err != nil {
				t.Fatal(err)
			}
			s, ok := d.Active()
			if !ok {
				t.Fatal("session not active while connected")
			}
			if sd, err := NewSockDiag(); err == nil {
				sd.Close()
				if s.RxBytesPerSec <= 0 {
					t.Fatalf("rx rate %.1f B/s after 20000 bytes, want > 0", s.RxBytesPerSec)
				}
			}
			conn.Close()
			if n := <-received; n != int64(len(payload)) {
				t.Fatalf("server received %d bytes", n)
			}
			stopped := pollUntil(t, d, Stopped)
			if stopped.Session.Ended.Before(started.Session.Since) || stopped.Session.Operator.String() != "127.0.0.2" {
				t.Fatalf("stopped %+v", stopped.Session)
			}
		})
	}
}

// TestSockDiagCounts checks the counters against bytes really sent.
func TestSockDiagCounts(t *testing.T) {
	sd, err := NewSockDiag()
	if err != nil {
		t.Skipf("sock_diag unavailable: %v", err)
	}
	defer sd.Close()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server := <-accepted
	defer server.Close()
	if _, err := client.Write(make([]byte, 12345)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(server, make([]byte, 12345)); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Write(make([]byte, 777)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, make([]byte, 777)); err != nil {
		t.Fatal(err)
	}
	local := server.LocalAddr().(*net.TCPAddr).AddrPort()
	remote := server.RemoteAddr().(*net.TCPAddr).AddrPort()
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, ok, err := sd.TCPBytes(local, remote, 0)
		if err != nil || !ok {
			t.Fatalf("TCPBytes: ok=%v err=%v", ok, err)
		}
		if b.Received == 12345 && b.Acked == 777 {
			break
		}
		if time.Now().After(deadline) { // the ACK of the 777 bytes may lag a moment
			t.Fatalf("counters %+v, want received 12345, acked 777", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A connection that does not exist is not an error, just absent.
	_, ok, err := sd.TCPBytes(local, netip.MustParseAddrPort("127.0.0.9:1"), 0)
	if err != nil || ok {
		t.Fatalf("unknown connection: ok=%v err=%v", ok, err)
	}
}

// TestUDPPeerOfTeleopProcess: a connected UDP socket of the process that
// listens on the teleop port (this test process) is a WebRTC-style peer.
func TestUDPPeerOfTeleopProcess(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("127.0.0.2")})
	if err != nil {
		t.Skipf("udp on 127.0.0.2: %v", err)
	}
	defer peer.Close()
	media, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP("127.0.0.1")}, peer.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer media.Close()
	for _, noUDP := range []bool{false, true} {
		d, err := New(Config{
			Ports:      []Port{{Number: port, Name: "vr-https"}},
			StartAfter: 50 * time.Millisecond,
			LocalAddrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
			NoUDP:      noUDP,
		})
		if err != nil {
			t.Fatal(err)
		}
		var got []Transition
		for range 5 {
			trs, err := d.Poll(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, trs...)
			time.Sleep(20 * time.Millisecond)
		}
		d.Close()
		if noUDP {
			if len(got) != 0 {
				t.Fatalf("NoUDP: transitions %v", got)
			}
			continue
		}
		if len(got) != 1 || got[0].Kind != Started {
			t.Fatalf("transitions %v, want one Started", got)
		}
		p := got[0].Session.Peers
		if len(p) != 1 || !p[0].UDP || p[0].Remote != peer.LocalAddr().(*net.UDPAddr).AddrPort() {
			t.Fatalf("peers %+v, want the UDP peer %s", p, peer.LocalAddr())
		}
	}
}
