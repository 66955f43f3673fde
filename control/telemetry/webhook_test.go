package telemetry

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
)

// receiver is a webhook endpoint answering the statuses it is given, then 200.
type receiver struct {
	mu       sync.Mutex
	statuses []int
	got      []Alert
	attempts int
	delay    time.Duration
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.attempts++
	status := http.StatusOK
	if len(r.statuses) > 0 {
		status, r.statuses = r.statuses[0], r.statuses[1:]
	}
	delay := r.delay
	r.mu.Unlock()
	time.Sleep(delay)
	if req.Header.Get("Content-Type") != "application/json" || req.Method != http.MethodPost {
		http.Error(w, "want a JSON POST", http.StatusBadRequest)
		return
	}
	var a Alert
	if err := json.NewDecoder(req.Body).Decode(&a); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if status == http.StatusOK {
		r.mu.Lock()
		r.got = append(r.got, a)
		r.mu.Unlock()
	}
	w.WriteHeader(status)
}

func (r *receiver) snapshot() ([]Alert, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Alert(nil), r.got...), r.attempts
}

func startWebhook(t *testing.T, o WebhookOptions) (*Webhook, func()) {
	t.Helper()
	o.BackoffBase, o.BackoffMax = time.Millisecond, 5*time.Millisecond
	w, err := NewWebhook(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	return w, func() { cancel(); <-done }
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestWebhookDeliversInOrderWithRetry(t *testing.T) {
	rcv := &receiver{statuses: []int{503, 429, 0}}
	rcv.statuses[2] = http.StatusBadGateway
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	w, stop := startWebhook(t, WebhookOptions{URL: srv.URL})
	defer stop()
	a1 := Alert{Type: store.TypeAlertFired, Rule: "disk-full", RobotID: "r1", Value: 95}
	a2 := Alert{Type: store.TypeAlertResolved, Rule: "disk-full", RobotID: "r1", Value: 50}
	w.Enqueue(a1)
	w.Enqueue(a2)
	waitFor(t, "two deliveries", func() bool { got, _ := rcv.snapshot(); return len(got) == 2 })
	got, attempts := rcv.snapshot()
	if got[0].Type != store.TypeAlertFired || got[1].Type != store.TypeAlertResolved || got[0].RobotID != "r1" || got[0].Value != 95 {
		t.Fatalf("delivered %+v", got)
	}
	if attempts != 5 {
		t.Fatalf("%d attempts, want 5 (three retried failures, two successes)", attempts)
	}
	if sent, dropped, failed := w.Stats(); sent != 2 || dropped != 0 || failed != 0 {
		t.Fatalf("stats %d/%d/%d", sent, dropped, failed)
	}
}

func TestWebhookGivesUp(t *testing.T) {
	rcv := &receiver{statuses: []int{400, 500, 500, 500}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	w, stop := startWebhook(t, WebhookOptions{URL: srv.URL, Attempts: 3})
	defer stop()
	w.Enqueue(Alert{Rule: "a", RobotID: "r1"}) // 400: not retried
	w.Enqueue(Alert{Rule: "b", RobotID: "r1"}) // 500 three times: given up
	w.Enqueue(Alert{Rule: "c", RobotID: "r1"}) // delivered
	waitFor(t, "the third alert", func() bool { got, _ := rcv.snapshot(); return len(got) == 1 })
	got, attempts := rcv.snapshot()
	if got[0].Rule != "c" || attempts != 5 {
		t.Fatalf("delivered %+v after %d attempts; want c after 5", got, attempts)
	}
	if sent, _, failed := w.Stats(); sent != 1 || failed != 2 {
		t.Fatalf("sent %d failed %d", sent, failed)
	}
}

func TestWebhookTimeoutAndBoundedQueue(t *testing.T) {
	rcv := &receiver{delay: 300 * time.Millisecond}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	// Not running: the queue fills.
	w, err := NewWebhook(WebhookOptions{URL: srv.URL, Queue: 2, Timeout: 50 * time.Millisecond, Attempts: 2, BackoffBase: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if !w.Enqueue(Alert{Rule: "a"}) || !w.Enqueue(Alert{Rule: "b"}) || w.Enqueue(Alert{Rule: "c"}) {
		t.Fatal("a queue of 2 must take two alerts and refuse the third")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() { defer close(done); _ = w.Run(ctx) }()
	waitFor(t, "both alerts given up", func() bool { _, _, failed := w.Stats(); return failed == 2 })
	cancel()
	<-done
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("4 timed-out attempts took %s: the timeout is not applied", el)
	}
	if sent, dropped, _ := w.Stats(); sent != 0 || dropped != 1 {
		t.Fatalf("sent %d dropped %d", sent, dropped)
	}
	for _, bad := range []string{"", "ftp://x", "http://", "::"} {
		if _, err := NewWebhook(WebhookOptions{URL: bad}); err == nil {
			t.Fatalf("URL %q accepted", bad)
		}
	}
}

// The leader's pass hands committed alerts to the webhook.
func TestPassNotifiesWebhook(t *testing.T) {
	rcv := &receiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	w, stop := startWebhook(t, WebhookOptions{URL: srv.URL})
	defer stop()
	l := newLab(t, Options{})
	l.report("r1", t0, reading{disk: 97})
	if _, _, err := l.tel.Pass(context.Background(), DefaultRules().Rules, func(a Alert) { w.Enqueue(a) }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the disk alert", func() bool { got, _ := rcv.snapshot(); return len(got) == 1 })
	got, _ := rcv.snapshot()
	if got[0].Rule != "disk-full" || got[0].Seq == 0 {
		t.Fatalf("webhook got %+v", got[0])
	}
}
