package robotsim

import (
	"context"
	"io/fs"
	"path/filepath"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/collect"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
)

// countingCollector counts samples; each reports the count as its uptime.
type countingCollector struct{ n int }

func (c *countingCollector) Sample(context.Context) (protocol.Telemetry, error) {
	c.n++
	return protocol.Telemetry{Network: protocol.Network{Hostname: "shared"}, UptimeSeconds: float64(c.n)}, nil
}

func TestSharedBoardSamplesOncePerInterval(t *testing.T) {
	ctx := context.Background()
	board := &countingCollector{}
	shared := &sharedSampler{every: time.Hour, base: board}
	nets := []protocol.Network{{Hostname: "r1", MAC: "2c:cf:67:00:00:01"}, {Hostname: "r2", MAC: "2c:cf:67:00:00:02"}}
	robots := []*sharedSample{{shared: shared, net: nets[0]}, {shared: shared, net: nets[1]}}
	for round := range 3 {
		for i, r := range robots {
			tel, err := r.Sample(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if tel.Network.Hostname != nets[i].Hostname || tel.Network.MAC != nets[i].MAC {
				t.Errorf("round %d robot %d: network %+v, want its own %+v", round, i, tel.Network, nets[i])
			}
		}
	}
	if board.n != 1 {
		t.Errorf("shared board sampled %d times within one interval, want 1", board.n)
	}
	shared.every = 0 // every call is due
	if tel, _ := robots[0].Sample(ctx); board.n != 2 || tel.UptimeSeconds != 2 {
		t.Errorf("after the interval: %d samples, uptime %v; want a fresh sample", board.n, tel.UptimeSeconds)
	}
}

// A robot of a shared-board fleet says in hello and telemetry what its own
// board's tree would have said.
func TestSharedBoardRobotMatchesItsOwnTree(t *testing.T) {
	f, err := NewFleet(FleetOptions{Robots: 2, FirstIndex: 7, Servers: []string{"ws://127.0.0.1:1"}, Dir: t.TempDir(), SharedBoard: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range f.Robots() {
		roots, err := r.Board.WriteTree(filepath.Join(t.TempDir(), "own"))
		if err != nil {
			t.Fatal(err)
		}
		hw, err := collect.ReadHardware(roots)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Board.Hardware(); got != hw {
			t.Errorf("%s: Board.Hardware() = %+v, its tree says %+v", r.ID, got, hw)
		}
		own, err := newSimCollector(roots, r.interfaces()).Sample(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		net := r.network()
		if net.Hostname != own.Network.Hostname || net.MAC != own.Network.MAC || len(net.IPs) != 1 || net.IPs[0] != own.Network.IPs[0] {
			t.Errorf("%s: network %+v, its tree says %+v", r.ID, net, own.Network)
		}
	}
}

// A lean fleet (shared board, identities in memory) writes one board for
// all its robots and no identity files.
func TestLeanFleetWritesOneBoard(t *testing.T) {
	dir := t.TempDir()
	ca, err := lab.LabCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewFleet(FleetOptions{Robots: 3, Servers: []string{"wss://127.0.0.1:1"}, Dir: dir, CA: ca, SharedBoard: true, MemoryIdentity: true})
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, rel)
		}
		return nil
	})
	want := len(lab.Pi5(0, "x").TreeFiles())
	if len(files) != want {
		t.Errorf("files %v, want the %d of one shared board", files, want)
	}
	for _, r := range f.Robots() {
		if r.Identity() == nil {
			t.Errorf("%s has no identity", r.ID)
		}
	}
}
