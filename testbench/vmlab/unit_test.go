package vmlab

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/servo"
	"github.com/lekiwi/heartbeat/internal/netns"
)

func TestConsoleWaitFor(t *testing.T) {
	r, w := io.Pipe()
	c := newConsole(time.Now())
	var log strings.Builder
	done := make(chan struct{})
	go func() { c.consume(r, &log); c.close("QEMU exited"); close(done) }()
	io.WriteString(w, "[    0.1] Booting\r\nsmokeinit: a=1\r\nsmokeinit: b=2\r\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := c.WaitFor(ctx, regexp.MustCompile(`^smokeinit: b=`))
	if err != nil || l.Text != "smokeinit: b=2" {
		t.Fatalf("WaitFor b = %q, %v", l.Text, err)
	}
	// Lines are consumed in order: a=1 came before b=2.
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if _, err := c.WaitFor(short, regexp.MustCompile(`^smokeinit: a=`)); err == nil || !strings.Contains(err.Error(), "smokeinit: b=2") {
		t.Errorf("an earlier line was returned, or the timeout error lacks the console's tail: %v", err)
	}
	// A line arriving while waiting, in two writes.
	go func() {
		io.WriteString(w, "smokeinit: c")
		time.Sleep(10 * time.Millisecond)
		io.WriteString(w, "=3\nlast line without newline")
		w.Close()
	}()
	if l, err := c.WaitFor(ctx, regexp.MustCompile(`^smokeinit: c=3$`)); err != nil || l.At <= 0 {
		t.Fatalf("WaitFor c = %+v, %v", l, err)
	}
	<-done
	if l, err := c.WaitFor(ctx, regexp.MustCompile(`^last line`)); err != nil {
		t.Errorf("the unterminated last line: %v", err)
	} else if l.Text != "last line without newline" {
		t.Errorf("last line %q", l.Text)
	}
	if _, err := c.WaitFor(ctx, regexp.MustCompile(`never`)); err == nil || !strings.Contains(err.Error(), "before QEMU exited") {
		t.Errorf("WaitFor after the end: %v", err)
	}
	if !strings.Contains(log.String(), "\r\n") {
		t.Error("the log is not the raw console output")
	}
}

// TestServoLinkFraming feeds a ping split in every way the FTDI emulation
// might split it, with line noise in front, and reads the answers back.
func TestServoLinkFraming(t *testing.T) {
	lab, guest := net.Pipe()
	l := &servoLink{sim: &servo.Sim{IDs: []int{1, 2, 3}}, conn: lab, done: make(chan struct{})}
	go l.fromGuest()
	go l.toGuest()
	defer l.close()
	ping2, _ := servo.Ping(2)
	ping9, _ := servo.Ping(9)
	ping3, _ := servo.Ping(3)
	stream := append(append(append([]byte{0x00, 0xFF}, ping2...), ping9...), ping3...)
	go func() {
		for _, b := range stream { // one byte at a time
			guest.Write([]byte{b})
		}
	}()
	var got []byte
	guest.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	for len(got) < 12 {
		n, err := guest.Read(buf)
		if err != nil {
			t.Fatalf("after %d bytes (% X): %v", len(got), got, err)
		}
		got = append(got, buf[:n]...)
	}
	var ids []byte
	for len(got) > 0 {
		st, used, err := servo.ParseStatus(got)
		if err != nil {
			t.Fatalf("answer % X: %v", got, err)
		}
		ids = append(ids, st.ID)
		got = got[used:]
	}
	if string(ids) != "\x02\x03" {
		t.Errorf("answers from IDs %v, want 2 and 3 (9 is silent)", ids)
	}
}

// TestStartFailsClean: QEMU refusing its arguments is an error of Start or
// of Wait (QEMU may open the servo sockets before it checks the CPU), with
// QEMU's message, and Close leaves nothing behind.
func TestStartFailsClean(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	kernel := filepath.Join(dir, "Image")
	if err := os.WriteFile(kernel, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := Start(context.Background(), Config{Kernel: kernel, Dir: dir, CPU: "no-such-cpu", ServoBuses: LeKiwiBuses(), Timeout: time.Minute})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = v.Wait(ctx)
		if cerr := v.Close(); cerr != nil {
			t.Error(cerr)
		}
	}
	if err == nil || !strings.Contains(err.Error(), "no-such-cpu") {
		t.Fatalf("err = %v, want QEMU's complaint about the CPU", err)
	}
	if socks, _ := filepath.Glob(filepath.Join(dir, "*.sock")); len(socks) > 0 {
		t.Errorf("sockets left: %v", socks)
	}
}

// TestBridgeKeepsItsMAC: ports with lower MACs come and go (VM taps do)
// and the bridge's own address stays, so the ARP caches of everything on
// it stay right.
func TestBridgeKeepsItsMAC(t *testing.T) {
	if err := NetAvailable(); err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	n, err := NewNet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	mac := func() string {
		t.Helper()
		var hw string
		err := netns.Run(n.Netns(), func() error {
			ifi, err := net.InterfaceByName(n.Bridge)
			if err == nil {
				hw = ifi.HardwareAddr.String()
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return hw
	}
	before := mac()
	for _, args := range [][]string{
		{"link", "add", "low0", "address", "00:00:5e:00:00:01", "type", "veth", "peer", "name", "low1"},
		{"link", "set", "low0", "master", n.Bridge},
		{"link", "set", "low0", "up"},
	} {
		if err := ipCmd(ctx, n.Netns(), args...); err != nil {
			t.Fatal(err)
		}
	}
	if got := mac(); got != before {
		t.Errorf("a port with a lower MAC changed the bridge's address from %s to %s", before, got)
	}
	if err := ipCmd(ctx, n.Netns(), "link", "del", "low0"); err != nil {
		t.Fatal(err)
	}
	if got := mac(); got != before {
		t.Errorf("removing the port changed the bridge's address from %s to %s", before, got)
	}
}
