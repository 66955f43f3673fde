package servo

import (
	"errors"
	"slices"
	"sync"
	"time"
)

// Sim is a simulated servo bus behind a Port: it parses the instruction
// packets written to it and answers pings the way the configured servos
// would. It exists so that probes and tests exercise the real Bus code
// (encoding, parsing, timeouts) without hardware.
type Sim struct {
	// IDs answer pings.
	IDs []int
	// Corrupt IDs answer with a wrong checksum, as two servos sharing an
	// ID do.
	Corrupt []int
	// Late IDs answer only after LateBy: a slow or misconfigured servo.
	Late   []int
	LateBy time.Duration
	// Noise is sent before every answer (a line glitch).
	Noise []byte

	mu       sync.Mutex
	once     sync.Once
	wake     chan struct{}
	pending  []simChunk
	timeout  time.Duration
	written  [][]byte
	closed   bool
	writeErr error
}

type simChunk struct {
	at   time.Time
	data []byte
}

// ErrSimClosed is returned by a closed Sim.
var ErrSimClosed = errors.New("servo: simulated bus closed")

func (s *Sim) init() { s.once.Do(func() { s.wake = make(chan struct{}, 1) }) }

// FailWrites makes every later Write fail with err (an unplugged adapter).
func (s *Sim) FailWrites(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writeErr = err
}

// Written returns the packets written so far.
func (s *Sim) Written() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([][]byte, len(s.written))
	copy(out, s.written)
	return out
}

func has(ids []int, id int) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// Write takes one instruction packet and queues the answer, if any.
func (s *Sim) Write(p []byte) (int, error) {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrSimClosed
	}
	if s.writeErr != nil {
		return 0, s.writeErr
	}
	s.written = append(s.written, append([]byte(nil), p...))
	// An instruction has the status layout with INSTR where ERROR is.
	in, _, err := ParseStatus(p)
	if err != nil || in.Error != InstPing || len(in.Params) != 0 {
		return len(p), nil // not a ping: real servos would not answer either
	}
	id := int(in.ID)
	now := time.Now()
	var reply []byte
	switch {
	case has(s.Corrupt, id):
		reply = []byte{0xFF, 0xFF, in.ID, 2, 0, 0}
		reply[5] = ^checksum(reply[2:5]) // deliberately wrong
	case has(s.IDs, id):
		reply = []byte{0xFF, 0xFF, in.ID, 2, 0, checksum([]byte{in.ID, 2, 0})}
	case has(s.Late, id):
		reply = []byte{0xFF, 0xFF, in.ID, 2, 0, checksum([]byte{in.ID, 2, 0})}
		now = now.Add(s.LateBy)
	default:
		return len(p), nil
	}
	data := append(append([]byte(nil), s.Noise...), reply...)
	// Keep the queue in arrival order: a late answer may still be on its
	// way when a prompt one arrives.
	i := len(s.pending)
	for i > 0 && s.pending[i-1].at.After(now) {
		i--
	}
	s.pending = slices.Insert(s.pending, i, simChunk{at: now, data: data})
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

// Read returns answered bytes, waiting up to the read timeout for them.
func (s *Sim) Read(p []byte) (int, error) {
	s.init()
	s.mu.Lock()
	deadline := time.Now().Add(s.timeout)
	s.mu.Unlock()
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return 0, ErrSimClosed
		}
		now := time.Now()
		wait := time.Until(deadline)
		if len(s.pending) > 0 {
			c := &s.pending[0]
			if !c.at.After(now) {
				n := copy(p, c.data)
				c.data = c.data[n:]
				if len(c.data) == 0 {
					s.pending = s.pending[1:]
				}
				s.mu.Unlock()
				return n, nil
			}
			wait = min(wait, c.at.Sub(now))
		}
		s.mu.Unlock()
		if wait <= 0 {
			return 0, nil // read timeout, as go.bug.st/serial reports it
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.wake:
			t.Stop()
		}
	}
}

// SetReadTimeout sets how long Read waits.
func (s *Sim) SetReadTimeout(d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.timeout = d
	return nil
}

// ResetInputBuffer drops answers that have arrived but were not read; late
// answers still on their way stay queued, as on a real line.
func (s *Sim) ResetInputBuffer() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	kept := s.pending[:0]
	for _, c := range s.pending {
		if c.at.After(now) {
			kept = append(kept, c)
		}
	}
	s.pending = kept
	return nil
}

// Close makes later calls fail.
func (s *Sim) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
