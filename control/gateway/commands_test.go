package gateway

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/lekiwi/heartbeat/protocol"
)

// A burst of hellos from robots with outstanding commands: every robot gets
// its own command, and the reads are batched instead of one per robot.
func TestPendingCommandsAfterHelloAreReadInBatches(t *testing.T) {
	h := newHarness(t, Config{})
	ctx := context.Background()
	const robots = 60
	for i := range robots {
		id := fmt.Sprintf("robot-%02d", i)
		if err := h.st.QueueCommand(ctx, id, protocol.Command{ID: "cmd-" + id, Name: "ping", Deadline: time.Now().Add(time.Hour)}, "test", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	clients := make([]*client, robots)
	for i := range clients {
		clients[i] = h.dial(t, fmt.Sprintf("robot-%02d", i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, robots)
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.send(protocol.TypeHello, protocol.Hello{MinVersion: 1, MaxVersion: 1, AgentVersion: "test", Stream: "s1", RobotType: protocol.RobotLeKiwi})
			for {
				env, err := c.recv()
				if err != nil {
					errs <- fmt.Errorf("%s: %w", c.robot, err)
					return
				}
				if env.Type != protocol.TypeCommand {
					continue // hello reply
				}
				cmd, err := protocol.DecodePayload[protocol.Command](env)
				if err != nil || cmd.ID != "cmd-"+c.robot {
					errs <- fmt.Errorf("%s got command %+v (%v), want its own", c.robot, cmd, err)
				}
				return
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The reads follow the connection records' commit, which hello no
	// longer waits for: the log tail may deliver the commands first.
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(h.gw.metrics.pendingReads) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%v reads for %d hellos", testutil.ToFloat64(h.gw.metrics.pendingReads), robots)
	if reads := testutil.ToFloat64(h.gw.metrics.pendingReads); reads < 1 || reads > robots/2 {
		t.Errorf("%v reads of pending commands for %d hellos at once; want them batched (at most %d)", reads, robots, robots/2)
	}
}
