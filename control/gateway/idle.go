package gateway

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Idle sessions wait for their robot's next frame on a shallow stack.
//
// A goroutine blocked inside a WebSocket read sits under some twenty frames
// (coder/websocket, crypto/tls, net): about 5 KiB of stack, so the runtime
// keeps it on 16 KiB and never shrinks it. Instead, the session's
// goroutine waits for the socket to become readable with a one-byte
// MSG_PEEK under the netpoller, then reads and handles frames on a fresh
// goroutine that exits as soon as nothing more is buffered. What grows
// while handling a frame is freed with that goroutine.

// idleWaiter is what a session needs to wait on a shallow stack.
type idleWaiter struct {
	raw net.Conn        // the hijacked connection (TLS or plain)
	br  *bufio.Reader   // the reader coder/websocket reads frames from
	rc  syscall.RawConn // the socket under raw
}

// newIdleWaiter returns nil when conn offers no socket to poll; the
// session then reads on its own goroutine as before.
func newIdleWaiter(raw net.Conn, br *bufio.Reader) *idleWaiter {
	if raw == nil || br == nil {
		return nil
	}
	under := raw
	if tc, ok := raw.(*tls.Conn); ok {
		under = tc.NetConn()
	}
	sc, ok := under.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return &idleWaiter{raw: raw, br: br, rc: rc}
}

// waitReadable blocks until the socket has data (or EOF, or an error for
// the next read to report). An error means the connection is closed.
func (w *idleWaiter) waitReadable() error {
	var b [1]byte
	return w.rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false // park in the netpoller until readable
			default:
				return true // data, EOF or a socket error: the read reports it
			}
		}
	})
}

// aLongTimeAgo is a read deadline that has passed: reads fail at once
// unless their bytes are already buffered.
var aLongTimeAgo = time.Unix(1, 0)

// buffered reports whether bytes of the next frame were already taken from
// the socket — by our reader or by TLS, which reads whole records — so
// the socket may stay quiet while a frame is waiting. It never blocks.
// The caller must ensure nothing else reads br meanwhile.
func (w *idleWaiter) buffered() bool {
	if w.br.Buffered() > 0 {
		return true
	}
	if err := w.raw.SetReadDeadline(aLongTimeAgo); err != nil {
		return true // let the read find out
	}
	_, err := w.br.Peek(1)
	if derr := w.raw.SetReadDeadline(time.Time{}); derr != nil {
		return true
	}
	// A timeout is not sticky in crypto/tls nor in bufio; any other error
	// is for the next read to report.
	return err == nil || !errors.Is(err, os.ErrDeadlineExceeded)
}
