package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

// WebhookOptions tune a Webhook.
type WebhookOptions struct {
	URL string
	// Timeout bounds one POST (default 5 s).
	Timeout time.Duration
	// Queue is how many alerts may wait (default 256); when it is full
	// new alerts are dropped and counted — the events stay in the log.
	Queue int
	// Attempts per alert (default 6), with full-jitter backoff from
	// BackoffBase (default 500 ms) doubling up to BackoffMax (default 30 s).
	Attempts    int
	BackoffBase time.Duration
	BackoffMax  time.Duration
	Client      *http.Client
	Logger      *slog.Logger
}

// Webhook POSTs alerts as JSON to one URL, one at a time, in order,
// retrying network errors, 5xx and 429 answers.
type Webhook struct {
	o                     WebhookOptions
	queue                 chan Alert
	sent, dropped, failed atomic.Int64
}

// NewWebhook checks the options.
func NewWebhook(o WebhookOptions) (*Webhook, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("alert webhook URL %q: want an absolute http(s) URL", o.URL)
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Queue <= 0 {
		o.Queue = 256
	}
	if o.Attempts <= 0 {
		o.Attempts = 6
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = 500 * time.Millisecond
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 30 * time.Second
	}
	if o.Client == nil {
		o.Client = &http.Client{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Webhook{o: o, queue: make(chan Alert, o.Queue)}, nil
}

// Enqueue queues an alert without blocking; false means the queue was
// full and the alert was dropped.
func (w *Webhook) Enqueue(a Alert) bool {
	select {
	case w.queue <- a:
		return true
	default:
		w.dropped.Add(1)
		w.o.Logger.Warn("alert webhook queue full: alert dropped (it is still in the event log)", "rule", a.Rule, "robot", a.RobotID, "type", a.Type)
		return false
	}
}

// Stats counts alerts delivered, dropped at a full queue, and given up
// after every attempt failed.
func (w *Webhook) Stats() (sent, dropped, failed int64) {
	return w.sent.Load(), w.dropped.Load(), w.failed.Load()
}

// Run delivers queued alerts until ctx ends.
func (w *Webhook) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case a := <-w.queue:
			if err := w.deliver(ctx, a); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				w.failed.Add(1)
				w.o.Logger.Warn("alert webhook gave up", "url", w.o.URL, "rule", a.Rule, "robot", a.RobotID, "type", a.Type, "err", err)
				continue
			}
			w.sent.Add(1)
		}
	}
}

// permanentError is an answer retrying cannot change (a 4xx but 429).
type permanentError struct{ error }

func (w *Webhook) deliver(ctx context.Context, a Alert) error {
	body, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode alert: %w", err)
	}
	var last error
	for attempt := range w.o.Attempts {
		if attempt > 0 {
			ceil := min(w.o.BackoffBase<<min(attempt-1, 20), w.o.BackoffMax)
			t := time.NewTimer(rand.N(ceil) + 1)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		last = w.post(ctx, body)
		if last == nil {
			return nil
		}
		if _, ok := last.(permanentError); ok {
			return last
		}
	}
	return fmt.Errorf("%d attempts: %w", w.o.Attempts, last)
}

func (w *Webhook) post(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.o.URL, bytes.NewReader(body))
	if err != nil {
		return permanentError{fmt.Errorf("build request: %w", err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "lekiwi-control-alerts")
	resp, err := w.o.Client.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", w.o.URL, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("POST %s: %s", w.o.URL, resp.Status)
	default:
		return permanentError{fmt.Errorf("POST %s: %s (not retried: fix the webhook's URL or receiver)", w.o.URL, resp.Status)}
	}
}
