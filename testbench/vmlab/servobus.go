package vmlab

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/agent/servo"
)

// ServoBus is one Feetech servo bus behind a USB serial adapter: QEMU's
// usb-serial, which emulates an FTDI FT232 (0403:6001, the guest's
// ftdi_sio driver binds it), its byte stream carried over a unix socket to
// a servo.Sim in the lab.
type ServoBus struct {
	// IDs are the servo IDs that answer pings.
	IDs []int
	// Serial is the adapter's USB serial number (/dev/serial/by-id names
	// are built from it); default "LAB" and the bus number.
	Serial string
}

// LeKiwiBuses is a LeKiwi's wiring: one bus, servos 1-9 (arm and base).
func LeKiwiBuses() []ServoBus { return []ServoBus{{IDs: idRange(1, 9)}} }

// XLEBuses is an XLE's: two buses, servos 1-8 and 1-9.
func XLEBuses() []ServoBus { return []ServoBus{{IDs: idRange(1, 8)}, {IDs: idRange(1, 9)}} }

func idRange(from, to int) []int {
	var ids []int
	for i := from; i <= to; i++ {
		ids = append(ids, i)
	}
	return ids
}

// servoLink connects one chardev socket to a Sim. The Sim takes whole
// instruction packets (it parses what one Write gives it), while the guest's
// bytes arrive in whatever pieces the FTDI emulation forwards, so they are
// framed here first. The Sim answers at once (or after its LateBy): it
// models no line time, so the round trip the guest sees is QEMU's USB
// emulation plus the guest's driver latency.
type servoLink struct {
	sim  *servo.Sim
	conn net.Conn
	done chan struct{}
	err  error // the first error of either direction, set before done closes
	once sync.Once
}

// dialServo connects to QEMU's listening chardev socket at path, waiting
// for QEMU to create it (or to exit, closing qemuExited).
func dialServo(path string, sim *servo.Sim, deadline time.Time, qemuExited <-chan struct{}) (*servoLink, error) {
	var conn net.Conn
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			conn = c
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("vmlab: connecting the servo bus to QEMU's socket %s: %w", path, err)
		}
		select {
		case <-qemuExited:
			return nil, fmt.Errorf("vmlab: QEMU exited before opening the servo bus socket %s", path)
		case <-time.After(20 * time.Millisecond):
		}
	}
	l := &servoLink{sim: sim, conn: conn, done: make(chan struct{})}
	go l.fromGuest()
	go l.toGuest()
	return l, nil
}

func (l *servoLink) fail(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.done)
	})
}

// fromGuest frames the guest's bytes into packets for the Sim.
func (l *servoLink) fromGuest() {
	buf := make([]byte, 0, 1024)
	chunk := make([]byte, 512)
	for {
		n, err := l.conn.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for len(buf) > 0 {
			// An instruction has a status packet's layout, INSTR in the
			// ERROR byte's place, so ParseStatus finds where one ends.
			// The Sim parses what it is given the same way, skipping
			// the garbage before a packet as a servo would.
			_, used, perr := servo.ParseStatus(buf)
			if errors.Is(perr, servo.ErrIncomplete) {
				buf = append(buf[:0], buf[used:]...)
				break
			}
			if _, werr := l.sim.Write(buf[:used]); werr != nil {
				l.fail(fmt.Errorf("servo sim write: %w", werr))
				return
			}
			buf = append(buf[:0], buf[used:]...)
		}
		if err != nil {
			l.fail(err)
			return
		}
	}
}

// toGuest sends the Sim's answers back.
func (l *servoLink) toGuest() {
	buf := make([]byte, 256)
	_ = l.sim.SetReadTimeout(50 * time.Millisecond)
	for {
		select {
		case <-l.done:
			return
		default:
		}
		n, err := l.sim.Read(buf)
		if err != nil {
			l.fail(fmt.Errorf("servo sim read: %w", err))
			return
		}
		if n > 0 {
			if _, err := l.conn.Write(buf[:n]); err != nil {
				l.fail(err)
				return
			}
		}
	}
}

func (l *servoLink) close() {
	l.fail(os.ErrClosed)
	l.conn.Close()
	l.sim.Close()
}
