package servo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"go.bug.st/serial"
)

// DefaultPingTimeout is how long Ping waits for an answer. A servo answers
// a ping within about a millisecond at 1 Mbaud (6 bytes each way plus its
// return delay); the rest is USB latency of the serial adapter. Nine silent
// IDs then cost well under 100 ms per bus.
const DefaultPingTimeout = 10 * time.Millisecond

// Pinger is what a hardware probe needs from a servo bus.
type Pinger interface {
	// Ping reports whether a servo with this ID answered. No answer within
	// the timeout is (false, nil). A garbled answer is (false, error
	// wrapping ErrChecksum): something is there, but not one healthy servo.
	Ping(ctx context.Context, id int) (bool, error)
	Close() error
}

// Port is the byte stream of a serial port: go.bug.st/serial's Port has
// these methods, and so does Sim. Read returns (0, nil) when the read
// timeout passes without data.
type Port interface {
	io.ReadWriter
	SetReadTimeout(time.Duration) error
	ResetInputBuffer() error
	Close() error
}

// Bus pings servos over a Port. It is not safe for concurrent use: the bus
// is half duplex, one transaction at a time.
type Bus struct {
	port    Port
	name    string
	timeout time.Duration
	buf     [2 * (maxPacketLen + 4)]byte
}

// NewBus uses port as a servo bus called name (for error messages). A
// timeout of 0 means DefaultPingTimeout.
func NewBus(port Port, name string, timeout time.Duration) *Bus {
	if timeout <= 0 {
		timeout = DefaultPingTimeout
	}
	return &Bus{port: port, name: name, timeout: timeout}
}

// Open opens the serial port at path (such as /dev/ttyACM0) at BaudRate,
// 8N1, as a servo bus.
func Open(path string, timeout time.Duration) (*Bus, error) {
	p, err := serial.Open(path, &serial.Mode{BaudRate: BaudRate, DataBits: 8, Parity: serial.NoParity, StopBits: serial.OneStopBit})
	if err != nil {
		return nil, fmt.Errorf("open servo bus %s at %d baud: %w (is it a serial adapter, and is the user in the dialout group?)", path, BaudRate, err)
	}
	return NewBus(p, path, timeout), nil
}

// Close closes the port.
func (b *Bus) Close() error { return b.port.Close() }

// Ping sends a PING to id and waits up to the bus timeout for its status
// packet. Packets from other IDs (a late answer to an earlier ping) are
// skipped.
func (b *Bus) Ping(ctx context.Context, id int) (bool, error) {
	if id < 0 || id > MaxID {
		return false, fmt.Errorf("ping servo %d on %s: IDs are 0-%d", id, b.name, MaxID)
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	pkt, err := Ping(byte(id))
	if err != nil {
		return false, err
	}
	// Drop whatever a previous, timed-out transaction left behind.
	if err := b.port.ResetInputBuffer(); err != nil {
		return false, fmt.Errorf("ping servo %d on %s: flush input: %w", id, b.name, err)
	}
	if _, err := b.port.Write(pkt); err != nil {
		return false, fmt.Errorf("ping servo %d on %s: write: %w", id, b.name, err)
	}
	deadline := time.Now().Add(b.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	n := 0
	var corrupt error
	for last := false; ; {
		if last {
			return false, corrupt
		}
		// Once the deadline has passed, read once more without waiting:
		// a process descheduled past its timeout (a loaded Pi) must not
		// call a servo missing whose answer is already in the buffer.
		left := time.Until(deadline)
		if left <= 0 {
			left, last = 0, true
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
		if n == len(b.buf) {
			// Full of garbage that never parses; keep the tail only.
			n = copy(b.buf[:], b.buf[n-maxPacketLen:n])
		}
		if err := b.port.SetReadTimeout(left); err != nil {
			return false, fmt.Errorf("ping servo %d on %s: set read timeout: %w", id, b.name, err)
		}
		m, err := b.port.Read(b.buf[n:])
		if err != nil {
			return false, fmt.Errorf("ping servo %d on %s: read: %w", id, b.name, err)
		}
		n += m
		for n > 0 {
			st, used, err := ParseStatus(b.buf[:n])
			n = copy(b.buf[:], b.buf[used:n])
			if errors.Is(err, ErrIncomplete) {
				break
			}
			if st.ID != byte(id) {
				continue
			}
			if err != nil {
				corrupt = fmt.Errorf("ping servo %d on %s: %w (two servos with the same ID, or noise on the bus)", id, b.name, err)
				continue
			}
			return true, nil
		}
	}
}
