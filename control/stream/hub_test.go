package stream

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeClock is the hub's clock in tests: it moves only when told.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func newTestHub(t *testing.T, o Options) (*Hub, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	o.Now = clk.Now
	return NewHub(o), clk
}

// wireFrame is any frame a client receives.
type wireFrame struct {
	Type     string           `json:"type"`
	Sub      string           `json:"sub"`
	Topic    string           `json:"topic"`
	RobotID  string           `json:"robot_id"`
	Kind     string           `json:"kind"`
	Priority string           `json:"priority"`
	Seq      int64            `json:"seq"`
	Count    int              `json:"count"`
	Data     json.RawMessage  `json:"data"`
	Stats    map[string]*Stat `json:"stats"`
	Replaced int              `json:"replaced"`
}

// drain returns every frame waiting for c without blocking.
func drain(t *testing.T, c *Client) []wireFrame {
	t.Helper()
	var out []wireFrame
	for i := 0; i < 100000; i++ {
		b, ok, err := c.pop()
		if err != nil {
			t.Fatalf("pop: %v", err)
		}
		if !ok {
			return out
		}
		var f wireFrame
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("frame %s is not JSON: %v", b, err)
		}
		out = append(out, f)
	}
	t.Fatal("drain: unbounded frames")
	return nil
}

func attach(t *testing.T, h *Hub, subs ...Subscription) *Client {
	t.Helper()
	c, err := h.Attach()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	for _, s := range subs {
		if err := c.Subscribe(s); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func hb(robot string, at time.Time, uptime float64) Message {
	m := HeartbeatMessage(robot, "n1", at, protocolHeartbeat(uptime))
	return m
}

func TestFiltersAndAliases(t *testing.T) {
	h, clk := newTestHub(t, Options{})
	c := attach(t, h,
		Subscription{ID: "hb", Topics: []string{"robot.*.heartbeat"}, Robots: []string{"r1"}},
		Subscription{ID: "teleop", Topics: []string{"teleoperation.started"}},
		Subscription{ID: "kinds", Topics: []string{"robot.*.event"}, Kinds: []string{"service.down"}},
	)
	h.Publish(hb("r1", clk.Now(), 1))
	h.Publish(hb("r2", clk.Now(), 1))
	h.Publish(robotEvent(t, 1, "r2", "teleop.started", ""))
	h.Publish(robotEvent(t, 2, "r2", "service.down", "warning"))
	h.Publish(robotEvent(t, 3, "r2", "service.up", ""))
	got := drain(t, c)
	// Normal (events) before bulk (heartbeats).
	want := []string{"teleop robot.r2.event", "kinds robot.r2.event", "hb robot.r1.heartbeat"}
	if len(got) != len(want) {
		t.Fatalf("got %d frames %+v, want %v", len(got), got, want)
	}
	for i, f := range got {
		if s := f.Sub + " " + f.Topic; s != want[i] {
			t.Errorf("frame %d = %s, want %s", i, s, want[i])
		}
	}
	if got[0].Kind != "teleop.started" || got[0].Seq != 1 {
		t.Errorf("teleop frame = %+v, want kind teleop.started seq 1", got[0])
	}
}

func TestThrottleSample(t *testing.T) {
	h, clk := newTestHub(t, Options{})
	c := attach(t, h, Subscription{ID: "s", Topics: []string{"robot.*.heartbeat"}, Throttle: Throttle{Rate: 1, Strategy: Sample}})
	// 10 heartbeats per second from two robots for 3 s.
	for i := range 30 {
		h.Publish(hb("r1", clk.Now(), float64(i)))
		h.Publish(hb("r2", clk.Now(), float64(i)))
		clk.Advance(100 * time.Millisecond)
		h.tick(clk.Now())
	}
	got := drain(t, c)
	per := map[string][]float64{}
	for _, f := range got {
		per[f.RobotID] = append(per[f.RobotID], uptime(t, f))
	}
	for _, r := range []string{"r1", "r2"} {
		// Delivered at t=0, 1 s, 2 s: the first of each interval.
		if fmt.Sprint(per[r]) != "[0 10 20]" {
			t.Errorf("%s sampled uptimes %v, want [0 10 20]", r, per[r])
		}
	}
}

func TestThrottleLatest(t *testing.T) {
	h, clk := newTestHub(t, Options{})
	c := attach(t, h, Subscription{ID: "s", Topics: []string{"robot.*.heartbeat"}, Throttle: Throttle{Rate: 2, Strategy: Latest}})
	h.Publish(hb("r1", clk.Now(), 0)) // first: at once
	if got := drain(t, c); len(got) != 1 || uptime(t, got[0]) != 0 {
		t.Fatalf("first message not delivered at once: %+v", got)
	}
	for i := 1; i <= 4; i++ { // 4 more within the 500 ms interval
		clk.Advance(100 * time.Millisecond)
		h.Publish(hb("r1", clk.Now(), float64(i)))
		h.tick(clk.Now())
	}
	if got := drain(t, c); len(got) != 0 {
		t.Fatalf("delivered inside the interval: %+v", got)
	}
	clk.Advance(100 * time.Millisecond) // t = 500 ms: interval over
	h.tick(clk.Now())
	got := drain(t, c)
	if len(got) != 1 || uptime(t, got[0]) != 4 {
		t.Fatalf("at the end of the interval got %+v, want only the newest (uptime 4)", got)
	}
	// Quiet for a while, then one message goes out at once again.
	clk.Advance(2 * time.Second)
	h.tick(clk.Now())
	h.Publish(hb("r1", clk.Now(), 9))
	if got := drain(t, c); len(got) != 1 || uptime(t, got[0]) != 9 {
		t.Fatalf("after a quiet period got %+v, want uptime 9 at once", got)
	}
}

func TestThrottleAggregate(t *testing.T) {
	h, clk := newTestHub(t, Options{})
	c := attach(t, h, Subscription{ID: "agg", Topics: []string{"robot.*.telemetry"}, Throttle: Throttle{Rate: 1, Strategy: Aggregate}})
	for i, cpu := range []float64{10, 30, 20, 40} {
		h.Publish(Message{Topic: "robot.r1.telemetry", RobotID: "r1", Priority: Bulk, Time: clk.Now(), Seq: int64(i + 1),
			Data: json.RawMessage(fmt.Sprintf(`{"resources":{"cpu_percent":%v},"os_version":"x"}`, cpu))})
		clk.Advance(200 * time.Millisecond)
		h.tick(clk.Now())
	}
	if got := drain(t, c); len(got) != 0 {
		t.Fatalf("aggregate delivered before its interval ended: %+v", got)
	}
	clk.Advance(200 * time.Millisecond)
	h.tick(clk.Now())
	got := drain(t, c)
	if len(got) != 1 {
		t.Fatalf("got %d frames, want one aggregate: %+v", len(got), got)
	}
	a := got[0]
	st := a.Stats["resources.cpu_percent"]
	if a.Type != "aggregate" || a.Count != 4 || a.Seq != 4 || st == nil || st.Min != 10 || st.Max != 40 || st.Mean != 25 || st.N != 4 {
		t.Fatalf("aggregate = %+v stats %+v, want count 4, seq 4, cpu min 10 max 40 mean 25", a, st)
	}
	if string(a.Data) != `{"resources":{"cpu_percent":40},"os_version":"x"}` {
		t.Errorf("aggregate data = %s, want the newest message's", a.Data)
	}
}

func TestThrottleWindowsAreSwept(t *testing.T) {
	h, clk := newTestHub(t, Options{})
	c := attach(t, h, Subscription{ID: "s", Topics: []string{"robot.*.heartbeat"}, Throttle: Throttle{Rate: 1, Strategy: Latest}})
	for i := range 1000 {
		h.Publish(hb(fmt.Sprintf("r%d", i), clk.Now(), 1))
	}
	clk.Advance(5 * time.Second)
	h.tick(clk.Now())
	drain(t, c)
	if n := len(c.subs[0].throttle.windows); n != 0 {
		t.Fatalf("%d idle throttle windows kept after 5 s", n)
	}
}

// TestSlowConsumerBounded: a client that never reads keeps at most one
// frame per topic, gets the newest of each, and does not slow the others.
func TestSlowConsumerBounded(t *testing.T) {
	const robots, rounds, limit = 50, 200, 64
	h, clk := newTestHub(t, Options{QueueLimit: limit})
	all := Subscription{ID: "all", Topics: []string{"robot.*.heartbeat"}}
	slow := attach(t, h, all)
	fast := attach(t, h, all)
	delivered := 0
	for round := range rounds {
		for r := range robots {
			h.Publish(hb(fmt.Sprintf("r%d", r), clk.Now(), float64(round)))
		}
		delivered += len(drain(t, fast))
		if n := slow.pending(); n > max(limit, robots) {
			t.Fatalf("round %d: slow client holds %d frames, bound is %d", round, n, max(limit, robots))
		}
	}
	if delivered != robots*rounds {
		t.Errorf("fast client got %d frames, want all %d", delivered, robots*rounds)
	}
	got := drain(t, slow)
	if got[0].Type != "lagging" || got[len(got)-1].Type != "caught_up" {
		t.Fatalf("slow client frames start %q end %q, want lagging … caught_up", got[0].Type, got[len(got)-1].Type)
	}
	msgs := got[1 : len(got)-1]
	if len(msgs) != robots {
		t.Fatalf("slow client got %d messages, want one per robot (%d)", len(msgs), robots)
	}
	for _, f := range msgs {
		if u := uptime(t, f); u != rounds-1 {
			t.Errorf("%s: slow client got uptime %v, want the newest %d", f.RobotID, u, rounds-1)
		}
	}
	if want := robots*rounds - robots; got[len(got)-1].Replaced+limit < want {
		t.Errorf("replaced %d, want about %d", got[len(got)-1].Replaced, want)
	}
	// Caught up: back to normal delivery.
	h.Publish(hb("r1", clk.Now(), 7))
	h.Publish(hb("r1", clk.Now(), 8))
	if got := drain(t, slow); len(got) != 2 {
		t.Fatalf("after catching up got %+v, want both messages", got)
	}
}

// TestCriticalOvertakes: a safety alert goes out before a backlog and is
// not held by the subscription's throttle.
func TestCriticalOvertakes(t *testing.T) {
	h, clk := newTestHub(t, Options{})
	c := attach(t, h, Subscription{ID: "r1", Topics: []string{"robot.r1.>"}, Throttle: Throttle{Rate: 0.1, Strategy: Latest}})
	h.Publish(robotEvent(t, 1, "r1", "battery.low", "warning")) // first of the interval: delivered
	h.Publish(robotEvent(t, 2, "r1", "battery.low", "warning")) // held for 10 s
	for i := range 100 {
		h.Publish(hb("r1", clk.Now(), float64(i))) // bulk backlog
	}
	clk.Advance(time.Second)
	h.tick(clk.Now())
	h.Publish(robotEvent(t, 3, "r1", "safety.estop", "error"))
	got := drain(t, c)
	if len(got) < 2 || got[0].Kind != "safety.estop" || got[0].Priority != "critical" {
		t.Fatalf("first frame = %+v, want the critical safety.estop", got[0])
	}
	for _, f := range got[1:] {
		if f.Seq == 2 {
			t.Errorf("throttled event delivered before its interval ended")
		}
	}
	clk.Advance(10 * time.Second)
	h.tick(clk.Now())
	later := drain(t, c)
	if len(later) == 0 || later[0].Seq != 2 {
		t.Errorf("held event not delivered at the end of its interval: %+v", later)
	}
}

// TestCriticalUnreadDisconnects: critical frames are never dropped, so a
// client that does not read them is cut off instead.
func TestCriticalUnreadDisconnects(t *testing.T) {
	h, _ := newTestHub(t, Options{CriticalLimit: 8})
	c := attach(t, h, Subscription{ID: "a", Topics: []string{"alert.>"}})
	for i := range 9 {
		h.Publish(robotEvent(t, int64(i+1), "r1", "safety.estop", "error"))
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client with unread critical frames was not disconnected")
	}
	if c.Err() == nil || h.Clients() != 0 {
		t.Fatalf("err %v, clients %d", c.Err(), h.Clients())
	}
	if _, err := c.Next(context.Background()); err == nil {
		t.Fatal("Next on a failed client returned no error")
	}
}

func TestSubscribeLimits(t *testing.T) {
	h, _ := newTestHub(t, Options{MaxSubscriptions: 2, MaxClients: 1})
	c := attach(t, h)
	for _, bad := range []Subscription{
		{ID: "", Topics: []string{"x"}},
		{ID: "a"},
		{ID: "a", Topics: []string{"a..b"}},
		{ID: "a", Topics: []string{"x"}, Throttle: Throttle{Rate: 1}},
		{ID: "a", Topics: []string{"x"}, Throttle: Throttle{Rate: -1, Strategy: Sample}},
		{ID: "a", Topics: []string{"x"}, Throttle: Throttle{Strategy: Latest}},
		{ID: "a", Topics: []string{"x"}, Throttle: Throttle{Rate: 1, Strategy: "median"}},
	} {
		if err := c.Subscribe(bad); err == nil {
			t.Errorf("Subscribe(%+v) accepted", bad)
		}
	}
	for _, id := range []string{"a", "b", "a"} { // same id replaces
		if err := c.Subscribe(Subscription{ID: id, Topics: []string{">"}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Subscribe(Subscription{ID: "c", Topics: []string{">"}}); err == nil {
		t.Error("third subscription accepted with MaxSubscriptions 2")
	}
	if _, err := h.Attach(); err != ErrTooManyClients {
		t.Errorf("second client: err %v, want ErrTooManyClients", err)
	}
}

func uptime(t *testing.T, f wireFrame) float64 {
	t.Helper()
	var d HeartbeatData
	if err := json.Unmarshal(f.Data, &d); err != nil {
		t.Fatalf("heartbeat data %s: %v", f.Data, err)
	}
	return d.UptimeSeconds
}

// PublishLater does no fan-out on the caller's goroutine: nothing reaches a
// subscriber until Run publishes it, a full queue sheds (and says so), and
// what was queued arrives in order.
func TestPublishLaterFansOutOnTheHubsGoroutine(t *testing.T) {
	h, clk := newTestHub(t, Options{LaterQueue: 2})
	c := attach(t, h, Subscription{ID: "hb", Topics: []string{"robot.*.heartbeat"}})
	built := 0
	for i, want := range []bool{true, true, false} {
		uptime := float64(i + 1)
		if got := h.PublishLater(func() Message { built++; return hb("r1", clk.Now(), uptime) }); got != want {
			t.Fatalf("PublishLater #%d = %v, want %v (queue of 2)", i+1, got, want)
		}
	}
	if built != 0 || c.pending() != 0 {
		t.Fatalf("before Run: %d messages built, %d frames pending; want none (the caller must not pay for fan-out)", built, c.pending())
	}
	if got := testutil.ToFloat64(h.m.shed); got != 1 {
		t.Fatalf("shed = %v, want 1", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Run(ctx)
	for _, want := range []float64{1, 2} {
		nctx, ncancel := context.WithTimeout(ctx, 5*time.Second)
		b, err := c.Next(nctx)
		ncancel()
		if err != nil {
			t.Fatalf("frame with uptime %v: %v", want, err)
		}
		var f wireFrame
		var d HeartbeatData
		if err := json.Unmarshal(b, &f); err != nil || json.Unmarshal(f.Data, &d) != nil || d.UptimeSeconds != want {
			t.Fatalf("frame %s: want heartbeat with uptime %v (%v)", b, want, err)
		}
	}
}
