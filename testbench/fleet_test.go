package testbench

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// countingCollector returns its name as the hostname and counts samples.
type countingCollector struct {
	host string
	n    int
	err  error
}

func (c *countingCollector) Sample(context.Context) (protocol.Telemetry, error) {
	c.n++
	return protocol.Telemetry{Network: protocol.Network{Hostname: c.host}, UptimeSeconds: float64(c.n)}, c.err
}

func TestSharedTelemetrySamplesOneBoardPerInterval(t *testing.T) {
	ctx := context.Background()
	board := &countingCollector{host: "shared"}
	shared := &sharedSampler{every: time.Hour, base: board}
	own := []*countingCollector{{host: "r1"}, {host: "r2"}}
	robots := []*sharedSample{{shared: shared, own: own[0]}, {shared: shared, own: own[1]}}
	for round := range 3 {
		for i, r := range robots {
			tel, err := r.Sample(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tel.Network.Hostname != own[i].host {
				t.Errorf("round %d robot %d: hostname %q, want its own %q", round, i, tel.Network.Hostname, own[i].host)
			}
		}
	}
	for i, o := range own {
		if o.n != 1 {
			t.Errorf("robot %d read its own board %d times, want once (for its network identity)", i, o.n)
		}
	}
	if board.n != 1 {
		t.Errorf("shared board sampled %d times within one interval, want 1", board.n)
	}
	shared.every = 0 // every call is due
	if tel, _ := robots[0].Sample(ctx); board.n != 2 || tel.UptimeSeconds != 2 {
		t.Errorf("after the interval: %d samples, uptime %v; want a fresh sample", board.n, tel.UptimeSeconds)
	}
	// A robot whose own board fails reports the error and tries again.
	bad := &sharedSample{shared: shared, own: &countingCollector{err: errors.New("no /proc")}}
	if _, err := bad.Sample(ctx); err == nil {
		t.Fatal("own board error hidden")
	}
	if bad.net != nil {
		t.Fatal("network identity kept from a failed sample")
	}
}
