package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/protocol"
)

// eventsByMessage indexes the stored (deduplicated) events by message.
func eventsByMessage(t *testing.T, stored map[uint64]protocol.Envelope, kind string) map[string][]uint64 {
	t.Helper()
	out := map[string][]uint64{}
	for seq, env := range stored {
		if env.Type != protocol.TypeEvent {
			continue
		}
		ev, err := protocol.DecodePayload[protocol.Event](env)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Kind == kind {
			out[ev.Message] = append(out[ev.Message], seq)
		}
	}
	return out
}

// TestEveryEventDeliveredExactlyOnceAcrossDrops: control "crashes" twice
// with messages received but not acknowledged. The agent resends every
// unacknowledged message with its original bytes, so that, after control's
// deduplication by sequence, every event is stored exactly once — those
// emitted before Run while disconnected, and those emitted concurrently.
func TestEveryEventDeliveredExactlyOnceAcrossDrops(t *testing.T) {
	fc := newFakeControl(t, "")
	fc.policy = func(conn int) connPolicy {
		switch conn {
		case 0:
			return connPolicy{dropAfter: 4} // acks 3, loses the 4th ack
		case 1:
			return connPolicy{noAck: true, dropAfter: 6} // acks nothing
		}
		return connPolicy{ackBatch: 3} // several sequences per ack, newest first
	}
	fc.hbIntervalMS = 20 // heartbeats also flush held acks
	h := newHarness(t, "", []string{fc.url()}, nil)
	const before, during = 10, 30
	emit := func(i int) {
		if err := h.a.Emit(context.Background(), protocol.Event{Kind: "test.tick", Message: fmt.Sprint("event-", i)}); err != nil {
			t.Error(err)
		}
	}
	for i := range before {
		emit(i)
	}
	h.start()
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := before + g; i < before+during; i += 3 {
				emit(i)
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wg.Wait()
	waitFor(t, 10*time.Second, "every event stored and the queue empty", func() bool {
		_, _, stored, _, _ := fc.snapshot()
		return len(eventsByMessage(t, stored, "test.tick")) == before+during && h.q.Stats().Pending == 0
	})
	h.stop(t)

	_, _, stored, dups, _ := fc.snapshot()
	for msg, seqs := range eventsByMessage(t, stored, "test.tick") {
		if len(seqs) != 1 {
			t.Fatalf("%s stored under %d sequences %v: the agent queued it twice", msg, len(seqs), seqs)
		}
	}
	if dups == 0 {
		t.Fatal("control saw no resend: the test did not exercise the unacknowledged path")
	}
	if s := h.a.Stats(); s.Reconnects < 2 {
		t.Fatalf("stats %+v: want at least 2 reconnects", s)
	}
	fc.checkNoViolations(t) // includes: resent bytes identical (original sequence, timestamp, payload)
}

// TestEmitSurvivesRestart: an event emitted by an agent that never
// connected is delivered by the next process, with its original sequence
// and timestamp.
func TestEmitSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	qopts := queue.Options{} // fsync, as on a robot
	first := newHarnessQ(t, dir, qopts, []string{deadURL(t)}, nil)
	if err := first.a.Emit(context.Background(), protocol.Event{Kind: protocol.EventTeleopStarted, Message: "before reboot"}); err != nil {
		t.Fatal(err)
	}
	emitted, err := first.q.Pending()
	if err != nil || len(emitted) != 1 {
		t.Fatalf("pending after Emit = %v, %v", emitted, err)
	}
	first.q.Close()

	fc := newFakeControl(t, "")
	second := newHarnessQ(t, dir, qopts, []string{fc.url()}, nil)
	second.start()
	waitFor(t, 5*time.Second, "the event from the previous process", func() bool {
		_, _, stored, _, _ := fc.snapshot()
		_, ok := stored[emitted[0].Seq]
		return ok
	})
	second.stop(t)
	_, _, stored, _, _ := fc.snapshot()
	want, _ := protocol.Decode(emitted[0].Data)
	if got := stored[emitted[0].Seq]; !got.Timestamp.Equal(want.Timestamp) || string(got.Payload) != string(want.Payload) || got.Type != protocol.TypeEvent {
		t.Fatalf("delivered %+v, want %+v", got, want)
	}
	hellos, _, _, _, _ := fc.snapshot()
	if hellos[0].Sequence <= emitted[0].Seq {
		t.Fatalf("hello sequence %d after restart is not above the queued %d", hellos[0].Sequence, emitted[0].Seq)
	}
	fc.checkNoViolations(t)
}

func telemetryFrames(frames []protocol.Envelope) []protocol.Envelope {
	var out []protocol.Envelope
	for _, f := range frames {
		if f.Type == protocol.TypeTelemetry {
			out = append(out, f)
		}
	}
	return out
}

// TestTelemetryDebounce: one telemetry right after connecting; nothing while
// nothing changes; a meaningful change is sent, but not before
// TelemetryMinInterval; a small change is not sent.
func TestTelemetryDebounce(t *testing.T) {
	fc := newFakeControl(t, "")
	const minInterval = 150 * time.Millisecond
	h := newHarness(t, "", []string{fc.url()}, func(o *Options) {
		o.TelemetrySampleInterval = 5 * time.Millisecond
		o.TelemetryMinInterval = minInterval
	})
	count := func() int { _, f, _, _, _ := fc.snapshot(); return len(telemetryFrames(f)) }
	h.start()
	waitFor(t, 5*time.Second, "the first telemetry", func() bool { return count() == 1 })

	h.col.set(func(t *protocol.Telemetry) { t.Resources.CPUPercent = 80 }) // right away: within the debounce
	waitFor(t, 5*time.Second, "telemetry after a CPU jump", func() bool { return count() == 2 })
	h.col.set(func(t *protocol.Telemetry) { t.Resources.CPUPercent = 81; t.UptimeSeconds += 5 })
	time.Sleep(2 * minInterval)
	if n := count(); n != 2 {
		t.Fatalf("%d telemetry messages after a 1-point change, want still 2", n)
	}
	h.col.set(func(t *protocol.Telemetry) { t.Network.IPs = []string{"10.0.0.8"} })
	waitFor(t, 5*time.Second, "telemetry after an address change", func() bool { return count() == 3 })
	h.stop(t)

	_, frames, _, _, _ := fc.snapshot()
	tel := telemetryFrames(frames)
	if gap := tel[1].Timestamp.Sub(tel[0].Timestamp); gap < minInterval {
		t.Fatalf("second telemetry %v after the first, want at least the %v debounce", gap, minInterval)
	}
	got, _ := protocol.DecodePayload[protocol.Telemetry](tel[2])
	if got.Resources.CPUPercent != 81 || got.Network.IPs[0] != "10.0.0.8" {
		t.Fatalf("third telemetry %+v: want the latest sample", got)
	}
}

func TestTelemetryMaxInterval(t *testing.T) {
	fc := newFakeControl(t, "")
	const maxInterval = 60 * time.Millisecond
	h := newHarness(t, "", []string{fc.url()}, func(o *Options) {
		o.TelemetrySampleInterval = 5 * time.Millisecond
		o.TelemetryMinInterval = 10 * time.Millisecond
		o.TelemetryMaxInterval = maxInterval
	})
	h.start()
	waitFor(t, 5*time.Second, "four unchanged telemetry messages", func() bool {
		_, f, _, _, _ := fc.snapshot()
		return len(telemetryFrames(f)) >= 4
	})
	h.stop(t)
	_, frames, _, _, _ := fc.snapshot()
	tel := telemetryFrames(frames)
	for i := 1; i < len(tel); i++ {
		if gap := tel[i].Timestamp.Sub(tel[i-1].Timestamp); gap < maxInterval {
			t.Fatalf("unchanged telemetry %d came %v after the previous, want at least %v", i, gap, maxInterval)
		}
	}
}

func TestCommands(t *testing.T) {
	fc := newFakeControl(t, "")
	h := newHarness(t, "", []string{fc.url()}, nil)
	h.start()
	h.rec.waitState(t, Connected, 5*time.Second)
	fc.command("lekiwi-7", protocol.Command{ID: "c1", Name: "ping"})
	fc.command("lekiwi-7", protocol.Command{ID: "c2", Name: "self-destruct"})
	responses := map[string]protocol.Response{}
	waitFor(t, 5*time.Second, "two responses, acknowledged", func() bool {
		_, _, stored, _, _ := fc.snapshot()
		for _, env := range stored {
			if env.Type == protocol.TypeResponse {
				r, err := protocol.DecodePayload[protocol.Response](env)
				if err != nil {
					t.Fatal(err)
				}
				responses[r.CommandID] = r
			}
		}
		return len(responses) == 2 && h.q.Stats().Pending == 0
	})
	h.stop(t)
	if r := responses["c1"]; r.Status != "ok" {
		t.Fatalf("ping answered %+v, want ok", r)
	}
	if r := responses["c2"]; r.Status != "error" || r.Message == "" || !strings.Contains(r.Message, `"self-destruct"`) {
		t.Fatalf("unknown command answered %+v, want error naming it", r)
	}
	fc.checkNoViolations(t)
}

// TestQueueDropsReported: events emitted into a full queue while
// disconnected evict; once connected the agent reports the totals once.
func TestQueueDropsReported(t *testing.T) {
	fc := newFakeControl(t, "")
	h := newHarnessQ(t, "", queue.Options{NoSync: true, MaxItems: 3}, []string{fc.url()}, nil)
	for i := range 4 {
		if err := h.a.Emit(context.Background(), protocol.Event{Kind: "test.tick", Message: fmt.Sprint("event-", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if s := h.q.Stats(); s.DroppedEvents != 1 {
		t.Fatalf("stats %+v: want the oldest event dropped", s)
	}
	h.start()
	// On connect the queue is full of events: the first telemetry is
	// dropped too, and the report waits for room.
	var reports []protocol.QueueDroppedData
	waitFor(t, 5*time.Second, "a drop report", func() bool {
		_, _, stored, _, _ := fc.snapshot()
		reports = reports[:0]
		for _, env := range stored {
			if ev, err := protocol.DecodePayload[protocol.Event](env); err == nil && ev.Kind == protocol.EventQueueDropped {
				var d protocol.QueueDroppedData
				if err := json.Unmarshal(ev.Data, &d); err != nil {
					t.Fatal(err)
				}
				reports = append(reports, d)
			}
		}
		return len(reports) > 0
	})
	time.Sleep(50 * time.Millisecond) // several more sample ticks: no second report
	h.stop(t)
	_, _, stored, _, _ := fc.snapshot()
	got := eventsByMessage(t, stored, "test.tick")
	if _, lost := got["event-0"]; lost || len(got) != 3 {
		t.Fatalf("delivered events %v: want event-1..3 (event-0 was evicted)", got)
	}
	if len(reports) != 1 || reports[0] != (protocol.QueueDroppedData{Telemetry: 1, Events: 1}) {
		t.Fatalf("drop reports %+v, want exactly one with telemetry 1, events 1", reports)
	}
	fc.checkNoViolations(t)
}

// TestRunTwice: a second concurrent Run is refused.
func TestRunTwice(t *testing.T) {
	h := newHarness(t, "", []string{deadURL(t)}, nil)
	h.start()
	h.rec.waitState(t, Retrying, 5*time.Second)
	if err := h.a.Run(context.Background()); err == nil {
		t.Fatal("second Run accepted")
	}
}

// TestManyAgentsInOneProcess: what a simulator does — hundreds of agents
// with NoSync queues against one control, each with a few goroutines.
func TestManyAgentsInOneProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	fc := newFakeControl(t, "")
	fc.hbIntervalMS = 200
	const n = 300
	base := runtime.NumGoroutine()
	var hs []*harness
	var connected sync.WaitGroup
	connected.Add(n)
	for i := range n {
		var once sync.Once
		h := newHarness(t, "", []string{fc.url()}, func(o *Options) {
			o.RobotID = fmt.Sprintf("sim-%04d", i)
			o.Logger = nil
			o.TelemetrySampleInterval = time.Second
			o.OnTransition = func(_, to State) {
				if to == Connected {
					once.Do(connected.Done)
				}
			}
		})
		hs = append(hs, h)
		h.start()
	}
	done := make(chan struct{})
	go func() { connected.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("not every simulated agent connected within 20s")
	}
	// Agent side: the Run loop and the reader (plus the library's); control
	// side in this same process: the handler. Allow 6 per robot in total.
	if per := float64(runtime.NumGoroutine()-base) / n; per > 6 {
		t.Fatalf("%.1f goroutines per robot (agent and fake control together), want at most 6", per)
	}
	for _, h := range hs {
		h.stop(t)
	}
	fc.checkNoViolations(t)
}

// TestWindowBoundsUnackedInFlight: with a window of 4 and a control that
// acknowledges nothing, exactly 4 queued messages are sent; after a
// reconnect to a control that does acknowledge, the rest follow.
func TestWindowBoundsUnackedInFlight(t *testing.T) {
	fc := newFakeControl(t, "")
	fc.hbIntervalMS = 10
	fc.policy = func(conn int) connPolicy {
		if conn == 0 {
			return connPolicy{noAck: true}
		}
		return connPolicy{}
	}
	h := newHarness(t, "", []string{fc.url()}, func(o *Options) { o.Window = 4 })
	for i := range 10 {
		if err := h.a.Emit(context.Background(), protocol.Event{Kind: "test.tick", Message: fmt.Sprint("event-", i)}); err != nil {
			t.Fatal(err)
		}
	}
	h.start()
	queuedFrames := func() (n, heartbeats int) {
		_, frames, _, _, _ := fc.snapshot()
		for _, f := range frames {
			if f.Type == protocol.TypeHeartbeat {
				heartbeats++
			} else {
				n++
			}
		}
		return n, heartbeats
	}
	waitFor(t, 5*time.Second, "heartbeats flowing with the window full", func() bool {
		n, hb := queuedFrames()
		return n >= 4 && hb >= 5
	})
	if n, _ := queuedFrames(); n != 4 {
		t.Fatalf("%d queued messages sent without acknowledgement, want the window of 4", n)
	}
	fc.mu.Lock()
	fc.conns[0].CloseNow()
	fc.mu.Unlock()
	waitFor(t, 5*time.Second, "everything delivered after the reconnect", func() bool { return h.q.Stats().Pending == 0 })
	h.stop(t)
	_, _, stored, _, _ := fc.snapshot()
	if got := eventsByMessage(t, stored, "test.tick"); len(got) != 10 {
		t.Fatalf("%d events stored, want 10", len(got))
	}
	fc.checkNoViolations(t)
}

// TestRejectedMessageRemoved: a queued message control refuses as invalid
// would be refused on every resend; the agent drops it and counts it, and
// the messages after it still flow.
func TestRejectedMessageRemoved(t *testing.T) {
	fc := newFakeControl(t, "")
	fc.policy = func(int) connPolicy { return connPolicy{reject: "test.poison"} }
	h := newHarness(t, "", []string{fc.url()}, nil)
	h.start()
	h.rec.waitState(t, Connected, 5*time.Second)
	for _, k := range []string{"test.ok", "test.poison", "test.ok"} {
		if err := h.a.Emit(context.Background(), protocol.Event{Kind: k, Message: k}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the queue to drain", func() bool { return h.q.Stats().Pending == 0 && h.a.Stats().Rejected == 1 })
	h.stop(t)
	if s := h.a.Stats(); s.Rejected != 1 || s.Reconnects != 0 {
		t.Fatalf("stats %+v: want 1 rejected, connection kept", s)
	}
}

// TestCommandHandlers: a handler answers progress at once and its final
// answer, sent later with Respond, reaches control after it; a name
// without a handler is still refused, naming the ones this agent knows.
func TestCommandHandlers(t *testing.T) {
	fc := newFakeControl(t, "")
	got := make(chan protocol.Command, 1)
	h := newHarness(t, "", []string{fc.url()}, func(o *Options) {
		o.Commands = map[string]CommandHandler{"work": func(cmd protocol.Command) protocol.Response {
			got <- cmd
			return protocol.Response{Status: "progress", Message: "accepted"}
		}}
	})
	h.start()
	h.rec.waitState(t, Connected, 5*time.Second)
	fc.command("lekiwi-7", protocol.Command{ID: "w1", Name: "work"})
	fc.command("lekiwi-7", protocol.Command{ID: "x1", Name: "self-destruct"})
	select {
	case cmd := <-got:
		if cmd.ID != "w1" {
			t.Fatalf("handler got %+v", cmd)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler not called")
	}
	if err := h.a.Respond(context.Background(), protocol.Response{CommandID: "w1", Status: "ok", Message: "done"}); err != nil {
		t.Fatal(err)
	}
	if err := h.a.Respond(context.Background(), protocol.Response{CommandID: "w1", Status: "maybe"}); err == nil {
		t.Fatal("Respond accepted an invalid status")
	}
	var answers []protocol.Response
	waitFor(t, 5*time.Second, "three responses, acknowledged", func() bool {
		_, _, stored, _, _ := fc.snapshot()
		answers = answers[:0]
		seqs := make([]uint64, 0, len(stored))
		for seq, env := range stored {
			if env.Type == protocol.TypeResponse {
				seqs = append(seqs, seq)
			}
		}
		slices.Sort(seqs)
		for _, seq := range seqs {
			r, err := protocol.DecodePayload[protocol.Response](stored[seq])
			if err != nil {
				t.Fatal(err)
			}
			answers = append(answers, r)
		}
		return len(answers) == 3 && h.q.Stats().Pending == 0
	})
	h.stop(t)
	var w1 []string
	for _, r := range answers {
		switch r.CommandID {
		case "w1":
			w1 = append(w1, r.Status)
		case "x1":
			if r.Status != "error" || !strings.Contains(r.Message, `"work"`) {
				t.Errorf("unknown command answered %+v, want an error naming the known commands", r)
			}
		}
	}
	if !slices.Equal(w1, []string{"progress", "ok"}) {
		t.Fatalf("w1 answered %v in order, want progress then ok", w1)
	}
	fc.checkNoViolations(t)
}

// TestAnswerBeforeHandlerReturnsComesAfterIt: work that finishes before its
// handler has returned (here: the final answer is given, from another
// goroutine and from the handler itself, before the handler returns
// progress) still reaches control as progress first, then the final
// answers in the order given — control must never see progress after ok.
func TestAnswerBeforeHandlerReturnsComesAfterIt(t *testing.T) {
	fc := newFakeControl(t, "")
	var h *harness
	h = newHarness(t, "", []string{fc.url()}, func(o *Options) {
		o.Commands = map[string]CommandHandler{"quick": func(cmd protocol.Command) protocol.Response {
			done := make(chan error, 1)
			go func() {
				done <- h.a.Respond(context.Background(), protocol.Response{CommandID: cmd.ID, Status: "ok", Message: "from the worker"})
			}()
			if err := <-done; err != nil {
				t.Errorf("Respond from the worker: %v", err)
			}
			if err := h.a.Respond(context.Background(), protocol.Response{CommandID: cmd.ID, Status: "error", Message: "from the handler"}); err != nil {
				t.Errorf("Respond from the handler: %v", err)
			}
			return protocol.Response{Status: "progress"}
		}}
	})
	h.start()
	h.rec.waitState(t, Connected, 5*time.Second)
	fc.command("lekiwi-7", protocol.Command{ID: "q1", Name: "quick"})
	var got []string
	waitFor(t, 5*time.Second, "three answers, acknowledged", func() bool {
		_, _, stored, _, _ := fc.snapshot()
		seqs := make([]uint64, 0, len(stored))
		for seq, env := range stored {
			if env.Type == protocol.TypeResponse {
				seqs = append(seqs, seq)
			}
		}
		slices.Sort(seqs)
		got = got[:0]
		for _, seq := range seqs {
			r, err := protocol.DecodePayload[protocol.Response](stored[seq])
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, r.CommandID+":"+r.Status+":"+r.Message)
		}
		return len(got) == 3 && h.q.Stats().Pending == 0
	})
	h.stop(t)
	want := []string{"q1:progress:", "q1:ok:from the worker", "q1:error:from the handler"}
	if !slices.Equal(got, want) {
		t.Fatalf("answers in sequence order %q, want %q", got, want)
	}
	fc.checkNoViolations(t)
}
