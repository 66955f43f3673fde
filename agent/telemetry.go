package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/lekiwi/heartbeat/agent/collect"
	"github.com/lekiwi/heartbeat/agent/queue"
	"github.com/lekiwi/heartbeat/protocol"
)

// telemetryState is owned by the Run goroutine.
type telemetryState struct {
	last   protocol.Telemetry // latest sample
	lastAt time.Time
	have   bool

	queued bool               // a telemetry message was queued by this process
	sent   protocol.Telemetry // the last one queued, the baseline for change
	sentAt time.Time
}

// sample reads the collector; a failed sample is logged and skipped.
func (a *Agent) sample(ctx context.Context) bool {
	t, err := a.o.Collector.Sample(ctx)
	if err != nil {
		a.log.Warn("telemetry sample failed", "err", err)
		return false
	}
	// A glitching counter must not make the message invalid for control.
	if math.IsNaN(t.Resources.CPUPercent) {
		t.Resources.CPUPercent = 0
	}
	t.Resources.CPUPercent = min(max(t.Resources.CPUPercent, 0), 100)
	a.tel.last, a.tel.lastAt, a.tel.have = t, time.Now(), true
	return true
}

// onSampleTick samples and queues telemetry when due and, while connected,
// reports drops. Drops are reported only while connected: the totals are
// cumulative and persisted, and a report queued while disconnected would
// only take room from the messages it reports on.
func (a *Agent) onSampleTick(ctx context.Context, connected bool) {
	if a.sample(ctx) {
		a.maybeQueueTelemetry(connected)
	}
	if connected {
		a.reportDrops()
	}
}

// maybeQueueTelemetry queues the latest sample if it is due: while
// connected (so right after connecting) when this process has queued none
// yet; when it changed
// meaningfully and TelemetryMinInterval has passed since the last one; or
// when TelemetryMaxInterval has passed regardless.
func (a *Agent) maybeQueueTelemetry(connected bool) {
	if !a.tel.have {
		return
	}
	reason := ""
	since := time.Since(a.tel.sentAt)
	switch {
	case !a.tel.queued:
		if !connected {
			return // nothing to compare with yet; the first goes out on connect
		}
		reason = "first after connecting"
	case since >= a.o.TelemetryMaxInterval:
		reason = "max interval"
	case since >= a.o.TelemetryMinInterval:
		changed, why := collect.Changed(a.tel.sent, a.tel.last)
		if !changed {
			return
		}
		reason = why
	default:
		return
	}
	t := a.tel.last
	if err := t.Validate(); err != nil {
		a.log.Warn("telemetry sample not sent: invalid", "err", err)
		return
	}
	it, stored, err := a.append(queue.Telemetry, protocol.TypeTelemetry, t)
	if err != nil {
		a.log.Error("queue telemetry", "err", err)
		return
	}
	a.tel.queued, a.tel.sent, a.tel.sentAt = true, t, time.Now()
	if !stored {
		a.log.Warn("telemetry dropped: queue full of events", "sequence", it.Seq)
		return
	}
	a.log.Debug("telemetry queued", "sequence", it.Seq, "reason", reason)
}

// reportDrops queues a queue.dropped event when messages were dropped since
// the last report and the queue has room (see queue.AppendDropReport).
func (a *Agent) reportDrops() {
	it, queued, err := a.q.AppendDropReport(func(seq uint64, totals protocol.QueueDroppedData) ([]byte, error) {
		data, err := json.Marshal(totals)
		if err != nil {
			return nil, err
		}
		return a.encode(protocol.TypeEvent, seq, protocol.Event{
			Kind:     protocol.EventQueueDropped,
			Severity: "warning",
			Message:  fmt.Sprintf("queue full while disconnected: %d telemetry and %d event messages dropped in total", totals.Telemetry, totals.Events),
			Data:     data,
		})
	})
	if err != nil {
		a.log.Error("queue drop report", "err", err)
		return
	}
	if queued {
		a.log.Warn("queue dropped messages; report queued", "sequence", it.Seq, "dropped", a.q.Stats())
		a.wake()
	}
}
