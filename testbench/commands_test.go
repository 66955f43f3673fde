package testbench

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

func postJSON(t *testing.T, c *lab.APIClient, path string, body any, into any) int {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", c.Base+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if into != nil {
		json.NewDecoder(resp.Body).Decode(into)
	}
	return resp.StatusCode
}

// Commands flow through the log: queued on one node, delivered by the node
// holding the robot, answered, visible from a third — and a command for an
// offline robot waits for it to connect.
func TestCommandsCrossNodesThroughTheLog(t *testing.T) {
	dir := t.TempDir()
	n1 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c1")})
	n2 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c2"), Join: []string{n1.Config().DBAddress}})
	n3 := startControl(t, lab.ControlOptions{Dir: filepath.Join(dir, "c3"), Join: []string{n1.Config().DBAddress, n2.Config().DBAddress}})
	fleet := startFleet(t, robotsim.FleetOptions{Robots: 2, Servers: []string{n2.URL()}, Dir: filepath.Join(dir, "fleet"), CA: n2.CA()})
	ctx := context.Background()
	eng, err := lab.NewAPIClient(ctx, n1, "engineer")
	if err != nil {
		t.Fatal(err)
	}
	reader := client(t, n3)
	waitConnectedInControl(t, reader, 10*time.Second, robotIDs(fleet.Robots())...)
	online, offline := fleet.Robots()[0], fleet.Robots()[1]
	if err := offline.Stop(); err != nil {
		t.Fatal(err)
	}
	var c1, c2 store.CommandRecord
	if code := postJSON(t, eng, "/v1/robots/"+online.ID+"/commands", api.CommandRequest{Name: "ping"}, &c1); code != http.StatusAccepted || c1.Status != store.CommandQueued {
		t.Fatalf("queue ping: %d %+v", code, c1)
	}
	if code := postJSON(t, eng, "/v1/robots/"+offline.ID+"/commands", api.CommandRequest{Name: "ping", Timeout: "1m"}, &c2); code != http.StatusAccepted {
		t.Fatalf("queue ping for offline robot: %d", code)
	}
	if code := postJSON(t, eng, "/v1/robots/nobody-1/commands", api.CommandRequest{Name: "ping"}, nil); code != http.StatusNotFound {
		t.Fatalf("command for an unknown robot: %d", code)
	}
	status := func(id string) store.CommandRecord {
		var c store.CommandRecord
		getJSON(t, reader, "/v1/commands/"+id, &c)
		return c
	}
	waitFor(t, 5*time.Second, "ping answered through node 2, seen on node 3", func() bool { return status(c1.ID).Status == store.CommandOK })
	if c := status(c1.ID); c.DeliveredBy != n2.Config().DBAddress || c.AnsweredAt.IsZero() {
		t.Fatalf("command record %+v", c)
	}
	time.Sleep(300 * time.Millisecond)
	if s := status(c2.ID).Status; s != store.CommandQueued {
		t.Fatalf("offline robot's command is %s, want queued", s)
	}
	if err := offline.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "queued command answered after the robot connected", func() bool { return status(c2.ID).Status == store.CommandOK })
	if mm, err := n3.Store().Verify(ctx); err != nil || len(mm) != 0 {
		t.Fatalf("verify: %v %+v", err, mm)
	}
}
