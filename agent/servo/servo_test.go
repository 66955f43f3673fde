package servo

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func TestInstruction(t *testing.T) {
	for _, tc := range []struct {
		id, instr byte
		params    []byte
		want      []byte
	}{
		// Checksums computed by hand: ^(1+2+1) = 0xFB.
		{1, InstPing, nil, []byte{0xFF, 0xFF, 0x01, 0x02, 0x01, 0xFB}},
		{9, InstPing, nil, []byte{0xFF, 0xFF, 0x09, 0x02, 0x01, 0xF3}},
		// READ (0x02) of 2 bytes at address 56 (present position): ^(1+4+2+56+2) = 0xBE.
		{1, 0x02, []byte{56, 2}, []byte{0xFF, 0xFF, 0x01, 0x04, 0x02, 0x38, 0x02, 0xBE}},
		{BroadcastID, InstPing, nil, []byte{0xFF, 0xFF, 0xFE, 0x02, 0x01, 0xFE}},
	} {
		got, err := Instruction(tc.id, tc.instr, tc.params)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("Instruction(%d, %#x, %v) = % X, %v; want % X", tc.id, tc.instr, tc.params, got, err, tc.want)
		}
	}
	if _, err := Instruction(254+1, InstPing, nil); err == nil {
		t.Error("ID 255 accepted")
	}
	if _, err := Instruction(1, 0x03, make([]byte, 249)); err == nil {
		t.Error("oversized packet accepted")
	}
}

func TestParseStatus(t *testing.T) {
	ok1 := []byte{0xFF, 0xFF, 0x01, 0x02, 0x00, 0xFC}
	withParams := []byte{0xFF, 0xFF, 0x03, 0x04, 0x20, 0x10, 0x27, 0x00}
	withParams[7] = checksum(withParams[2:7])
	badSum := []byte{0xFF, 0xFF, 0x01, 0x02, 0x00, 0xFD}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name string
		in   []byte
		want Status
		used int
		err  error
	}{
		{"ping reply", ok1, Status{ID: 1}, 6, nil},
		{"with params and overload", withParams, Status{ID: 3, Error: ErrBitOverload, Params: []byte{0x10, 0x27}}, 8, nil},
		{"garbage first", cat([]byte{0x00, 0x13, 0xFF}, ok1), Status{ID: 1}, 9, nil},
		{"bad checksum", badSum, Status{ID: 1}, 6, ErrChecksum},
		{"two packets, first only", cat(ok1, withParams), Status{ID: 1}, 6, nil},
		{"truncated", ok1[:5], Status{}, 0, ErrIncomplete},
		{"header only", []byte{0x00, 0xFF, 0xFF}, Status{}, 1, ErrIncomplete},
		{"no header, trailing FF kept", []byte{1, 2, 0xFF}, Status{}, 2, ErrIncomplete},
		{"empty", nil, Status{}, 0, ErrIncomplete},
		{"broadcast ID is not a reply", cat([]byte{0xFF, 0xFF, 0xFE, 0x02, 0x00, 0xFF}, ok1), Status{ID: 1}, 12, nil},
		{"error byte above 0x7F resyncs", cat([]byte{0xFF, 0xFF, 0x01, 0x02, 0x80}, ok1), Status{ID: 1}, 11, nil},
		{"length below 2 resyncs", cat([]byte{0xFF, 0xFF, 0x01, 0x01}, ok1), Status{ID: 1}, 10, nil},
		{"triple FF", cat([]byte{0xFF}, ok1), Status{ID: 1}, 7, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, used, err := ParseStatus(tc.in)
			if !errors.Is(err, tc.err) || used != tc.used || st.ID != tc.want.ID || st.Error != tc.want.Error || !bytes.Equal(st.Params, tc.want.Params) {
				t.Fatalf("ParseStatus(% X) = %+v, %d, %v; want %+v, %d, %v", tc.in, st, used, err, tc.want, tc.used, tc.err)
			}
		})
	}
}

func TestBusPing(t *testing.T) {
	sim := &Sim{IDs: []int{1, 2, 3}, Corrupt: []int{4}, Late: []int{5}, LateBy: time.Second, Noise: []byte{0x00, 0xFF, 0x42}}
	bus := NewBus(sim, "sim0", 5*time.Millisecond)
	ctx := context.Background()
	for _, tc := range []struct {
		id      int
		want    bool
		wantErr error
	}{
		{1, true, nil}, {3, true, nil}, {6, false, nil},
		{4, false, ErrChecksum},
		{5, false, nil}, // answers after the timeout
		{2, true, nil},  // the late answer from 5 must not be taken for 2's
	} {
		got, err := bus.Ping(ctx, tc.id)
		if got != tc.want || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
			t.Errorf("Ping(%d) = %v, %v; want %v, %v", tc.id, got, err, tc.want, tc.wantErr)
		}
	}
	if w := sim.Written(); len(w) != 6 || !bytes.Equal(w[0], []byte{0xFF, 0xFF, 0x01, 0x02, 0x01, 0xFB}) {
		t.Errorf("written packets %X", w)
	}
	if _, err := bus.Ping(ctx, 254); err == nil {
		t.Error("ping of the broadcast ID accepted")
	}
}

func TestBusPingTimeoutBounded(t *testing.T) {
	bus := NewBus(&Sim{}, "silent", 5*time.Millisecond)
	start := time.Now()
	for id := 1; id <= 9; id++ {
		if ok, err := bus.Ping(context.Background(), id); ok || err != nil {
			t.Fatalf("silent bus: Ping(%d) = %v, %v", id, ok, err)
		}
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Errorf("9 pings on a silent bus took %v", el)
	}
}

// offCPU is a Port whose first read returns nothing after the caller was
// off the CPU past the ping timeout, the answer having arrived meanwhile:
// what a loaded machine (or the race detector) does to a 3 ms timeout.
type offCPU struct {
	*Sim
	pause time.Duration
	reads *int
}

func (p offCPU) Read(b []byte) (int, error) {
	*p.reads++
	if *p.reads == 1 {
		time.Sleep(p.pause)
		return 0, nil
	}
	return p.Sim.Read(b)
}

func TestBusPingAnswerWaitingPastDeadline(t *testing.T) {
	// The answer is in the buffer, the deadline has passed: it still
	// counts, and a silent ID is still silent.
	for id, want := range map[int]bool{1: true, 3: false} {
		reads := 0
		bus := NewBus(offCPU{Sim: &Sim{IDs: []int{1, 2}}, pause: 10 * time.Millisecond, reads: &reads}, "sim0", 3*time.Millisecond)
		if got, err := bus.Ping(context.Background(), id); got != want || err != nil {
			t.Errorf("Ping(%d) after a pause past the timeout = %v, %v; want %v, nil", id, got, err, want)
		}
	}
}

func TestBusPingErrors(t *testing.T) {
	sim := &Sim{IDs: []int{1}}
	bus := NewBus(sim, "sim0", 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := bus.Ping(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
	unplugged := errors.New("device gone")
	sim.FailWrites(unplugged)
	if _, err := bus.Ping(context.Background(), 1); !errors.Is(err, unplugged) {
		t.Errorf("write failure: %v", err)
	}
	sim.FailWrites(nil)
	sim.Close()
	if _, err := bus.Ping(context.Background(), 1); !errors.Is(err, ErrSimClosed) {
		t.Errorf("closed: %v", err)
	}
}

func TestOpenMissingPort(t *testing.T) {
	if _, err := Open("/dev/does-not-exist-servo", 0); err == nil {
		t.Fatal("opening a missing port succeeded")
	}
}

// FuzzParseStatus: never panic, never claim more bytes than given, and
// anything accepted re-encodes to exactly the bytes it came from.
func FuzzParseStatus(f *testing.F) {
	for _, seed := range [][]byte{
		{0xFF, 0xFF, 0x01, 0x02, 0x00, 0xFC},
		{0xFF, 0xFF, 0x03, 0x04, 0x20, 0x10, 0x27, 0xA1},
		{0x00, 0xFF, 0xFF, 0xFF, 0x01, 0x02, 0x00, 0xFC},
		{0xFF, 0xFF, 0x01, 0xFA, 0x00},
		{0xFF},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, used, err := ParseStatus(b)
		if used < 0 || used > len(b) {
			t.Fatalf("used %d of %d bytes", used, len(b))
		}
		if errors.Is(err, ErrIncomplete) {
			return
		}
		if used == 0 {
			t.Fatal("a complete packet consumed nothing")
		}
		if err != nil {
			if !errors.Is(err, ErrChecksum) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		enc, ierr := Instruction(st.ID, st.Error, st.Params)
		if ierr != nil {
			t.Fatalf("accepted status %+v does not re-encode: %v", st, ierr)
		}
		if !bytes.HasSuffix(b[:used], enc) {
			t.Fatalf("status %+v re-encodes to % X, not the tail of % X", st, enc, b[:used])
		}
	})
}
