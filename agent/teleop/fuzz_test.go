package teleop

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"
)

// FuzzParseProcNet: any bytes either parse into sockets whose fields
// round-trip through the line format, or fail with an error; never a panic.
func FuzzParseProcNet(f *testing.F) {
	for _, name := range []string{"tcp_lekiwi_idle", "tcp_lekiwi_driven", "tcp6_xle_driven", "tcp6_empty"} {
		data, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := parseProcNet(data, nil)
		if err != nil {
			return
		}
		lines := 0
		for _, l := range bytes.Split(data, []byte("\n"))[1:] {
			if len(bytes.TrimSpace(l)) > 0 {
				lines++
			}
		}
		if len(got) != lines {
			t.Fatalf("%d sockets from %d non-empty lines", len(got), lines)
		}
		for _, s := range got {
			if !s.Local.Addr().IsValid() || !s.Remote.Addr().IsValid() {
				t.Fatalf("invalid address in %+v", s)
			}
		}
	})
}

// FuzzParseDiagReply: netlink replies never panic the parser, and counters
// are only reported for an established socket with the expected peer port.
func FuzzParseDiagReply(f *testing.F) {
	// A well-formed reply: nlmsghdr + inet_diag_msg + INET_DIAG_INFO.
	good := make([]byte, 16+msgLen+4+tcpiBytesReceived+8)
	ne := binary.NativeEndian
	ne.PutUint32(good[0:], uint32(len(good)))
	ne.PutUint16(good[4:], sockDiagByFamily)
	ne.PutUint32(good[8:], 1)
	body := good[16:]
	body[0], body[1] = 2, 1
	binary.BigEndian.PutUint16(body[6:], 50012)
	ne.PutUint32(body[68:], 2001)
	ne.PutUint16(body[msgLen:], uint16(4+tcpiBytesReceived+8))
	ne.PutUint16(body[msgLen+2:], inetDiagInfo)
	ne.PutUint64(body[msgLen+4+tcpiBytesAcked:], 777)
	ne.PutUint64(body[msgLen+4+tcpiBytesReceived:], 12345)
	if b, ok, _, err := parseDiagReply(good, 50012, 2001); err != nil || !ok || b.Received != 12345 || b.Acked != 777 {
		f.Fatalf("seed reply: %+v %v %v", b, ok, err)
	}
	f.Add(good, uint16(50012), uint64(2001))
	errReply := make([]byte, 20)
	ne.PutUint32(errReply[0:], 20)
	ne.PutUint16(errReply[4:], 2) // NLMSG_ERROR
	ne.PutUint32(errReply[16:], uint32(0xfffffffe))
	f.Add(errReply, uint16(1), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, dport uint16, inode uint64) {
		_, ok, _, err := parseDiagReply(b, dport, inode)
		if ok && err != nil {
			t.Fatal("ok with an error")
		}
		if ok && (len(b) < 16+msgLen || b[17] != 1 || binary.BigEndian.Uint16(b[22:]) != dport) {
			t.Fatal("counters for a reply that is not an established socket with our peer")
		}
	})
}
