// Package servo speaks the Feetech STS/SCS serial servo protocol (the
// STS3215 motors of LeKiwi and XLE robots) well enough to find out which
// servo IDs answer on a bus.
//
// Wire format, as in Feetech's SCServo SDK (protocol_packet_handler) and
// LeRobot's FeetechMotorsBus, half duplex at 1 Mbaud, 8N1:
//
//	instruction: 0xFF 0xFF ID LEN INSTR PARAM... CHECKSUM   (LEN = len(PARAM)+2)
//	status:      0xFF 0xFF ID LEN ERROR PARAM... CHECKSUM   (LEN = len(PARAM)+2)
//	CHECKSUM = ^(ID + LEN + INSTR|ERROR + PARAM...) & 0xFF
//
// A PING (instruction 0x01, no parameters) is answered by the servo with
// that ID with a status packet without parameters. IDs are 0-253; 254 is
// the broadcast ID, to which no single servo answers.
package servo

import (
	"bytes"
	"errors"
	"fmt"
)

// Protocol constants.
const (
	// BaudRate is the factory default of STS3215 servos and what LeRobot uses.
	BaudRate = 1_000_000
	// MaxID is the highest addressable servo ID.
	MaxID = 253
	// BroadcastID addresses every servo; none replies to it.
	BroadcastID = 0xFE
	// InstPing asks one servo to answer with an empty status packet.
	InstPing = 0x01
	// maxPacketLen bounds the LEN byte as the SDK does (RXPACKET_MAX_LEN).
	maxPacketLen = 250
	// minStatusLen is a status packet without parameters.
	minStatusLen = 6
)

// Status error bits (the ERROR byte of a status packet).
const (
	ErrBitVoltage  = 1 << 0
	ErrBitAngle    = 1 << 1
	ErrBitOverheat = 1 << 2
	ErrBitCurrent  = 1 << 3
	ErrBitOverload = 1 << 5
)

var header = []byte{0xFF, 0xFF}

// ErrIncomplete means the buffer holds the start of a packet but not all
// of it yet: read more bytes and parse again.
var ErrIncomplete = errors.New("servo: incomplete status packet")

// ErrChecksum means a complete status packet arrived whose checksum does
// not match: noise on the bus, a wrong baud rate, or two servos sharing an
// ID and answering at once.
var ErrChecksum = errors.New("servo: status packet checksum mismatch")

// Status is a servo's reply.
type Status struct {
	ID     byte
	Error  byte // fault bits (ErrBit*); 0 when the servo is fine
	Params []byte
}

// checksum is the one's complement of the byte sum of ID through the last
// parameter.
func checksum(body []byte) byte {
	var sum byte
	for _, b := range body {
		sum += b
	}
	return ^sum
}

// Instruction encodes an instruction packet for servo id.
func Instruction(id, instr byte, params []byte) ([]byte, error) {
	if id > MaxID && id != BroadcastID {
		return nil, fmt.Errorf("servo: instruction 0x%02x for ID %d: IDs are 0-%d or %d (broadcast)", instr, id, MaxID, BroadcastID)
	}
	if len(params)+2 > maxPacketLen {
		return nil, fmt.Errorf("servo: instruction 0x%02x with %d parameter bytes: at most %d fit in a packet", instr, len(params), maxPacketLen-2)
	}
	pkt := make([]byte, 0, len(params)+6)
	pkt = append(pkt, 0xFF, 0xFF, id, byte(len(params)+2), instr)
	pkt = append(pkt, params...)
	return append(pkt, checksum(pkt[2:])), nil
}

// Ping encodes a PING instruction for servo id.
func Ping(id byte) ([]byte, error) { return Instruction(id, InstPing, nil) }

// ParseStatus finds the first status packet in buf. It returns the packet,
// and how many bytes of buf it used up (garbage before the packet
// included), so that the caller can drop them and parse the rest.
//
// Bytes before a 0xFF 0xFF header, and headers followed by an impossible ID,
// length or error byte, are skipped as the SDK does. When only the start of
// a packet is there it returns ErrIncomplete with the bytes that can be
// dropped already. A complete packet with a bad checksum returns
// ErrChecksum, with the packet's ID in Status and the packet consumed.
func ParseStatus(buf []byte) (Status, int, error) {
	skipped := 0
	for {
		i := bytes.Index(buf[skipped:], header)
		if i < 0 {
			// Keep a trailing 0xFF: it may be the first header byte.
			drop := len(buf)
			if drop > 0 && buf[drop-1] == 0xFF {
				drop--
			}
			return Status{}, drop, ErrIncomplete
		}
		start := skipped + i
		p := buf[start:]
		if len(p) < 5 {
			return Status{}, start, ErrIncomplete
		}
		id, n, errByte := p[2], int(p[3]), p[4]
		if id > MaxID || n < 2 || n > maxPacketLen || errByte > 0x7F {
			// Not a real header (or a corrupt one): resynchronise one
			// byte further on.
			skipped = start + 1
			continue
		}
		total := n + 4
		if len(p) < total {
			return Status{}, start, ErrIncomplete
		}
		st := Status{ID: id, Error: errByte}
		if checksum(p[2:total-1]) != p[total-1] {
			return st, start + total, ErrChecksum
		}
		if n > 2 {
			st.Params = append([]byte(nil), p[5:total-1]...)
		}
		return st, start + total, nil
	}
}
