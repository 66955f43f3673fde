package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

// seedFleet records two robots on a node: kiwi-01 online and driven by
// 198.51.100.7 with telemetry, kiwi-02 connected then offline.
func seedFleet(t *testing.T, st *store.Store) {
	t.Helper()
	now := time.Now().UTC()
	conn := func(id string) []byte {
		d := store.ConnectedData{Session: "s-" + id, Node: "test", Type: protocol.RobotLeKiwi, AgentVersion: "1.4.0"}
		if id == "kiwi-01" { // kiwi-02 runs a system not built by provision image build
			d.Image = &protocol.ImageInfo{Version: "2026.11.2", Profile: "lekiwi", Created: time.Date(2026, 11, 2, 9, 30, 0, 0, time.UTC), Seed: "5b1e0a"}
		}
		b, _ := json.Marshal(d)
		return b
	}
	teleop, _ := json.Marshal(protocol.TeleopData{Operator: "198.51.100.7", Since: now})
	started, _ := json.Marshal(protocol.Event{Kind: protocol.EventTeleopStarted, Severity: "info", Message: "teleoperation started by 198.51.100.7", Data: teleop})
	temp := 51.5
	tel, _ := json.Marshal(protocol.Telemetry{Resources: protocol.Resources{CPUPercent: 12, MemoryUsedBytes: 1 << 30, MemoryTotalBytes: 4 << 30, TemperatureC: &temp}})
	events := []store.Event{
		{RobotID: "kiwi-01", Type: store.TypeRobotConnected, Time: now, Data: conn("kiwi-01")},
		{RobotID: "kiwi-02", Type: store.TypeRobotConnected, Time: now, Data: conn("kiwi-02")},
		{RobotID: "kiwi-01", Type: store.TypeTelemetryReported, Time: now, Data: tel, Stream: "q1", RobotSeq: 1},
		{RobotID: "kiwi-01", Type: store.TypeRobotEvent, Time: now, Data: started, Stream: "q1", RobotSeq: 2},
		{RobotID: "kiwi-02", Type: store.TypeRobotOffline, Time: now, Data: json.RawMessage(`{}`)},
	}
	if _, err := st.Append(context.Background(), events); err != nil {
		t.Fatal(err)
	}
}

// `control robots ls|show` against a real node's admin socket: JSON that
// parses into the API's types, filters, a table for people, refusals.
func TestRobotsCommands(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir, freeAddr(t))
	seedFleet(t, n.Store())

	run := func(args ...string) string {
		t.Helper()
		out, err := cli(t, append(args, "--data-dir", dir)...)
		if err != nil {
			t.Fatalf("control %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	var list api.RobotList
	if err := json.Unmarshal([]byte(run("robots", "ls", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Robots) != 2 || list.Robots[0].ID != "kiwi-01" || list.Robots[1].ID != "kiwi-02" {
		t.Fatalf("robots ls: %+v", list.Robots)
	}
	if !list.Robots[0].Teleoperation.Active || list.Robots[0].Teleoperation.Operator != "198.51.100.7" {
		t.Fatalf("kiwi-01 teleoperation %+v", list.Robots[0].Teleoperation)
	}
	list = api.RobotList{}
	if err := json.Unmarshal([]byte(run("robots", "ls", "--state", "offline", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Robots) != 1 || list.Robots[0].ID != "kiwi-02" {
		t.Fatalf("robots ls --state offline: %+v", list.Robots)
	}

	table := run("robots", "ls")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[0], "IMAGE") || !strings.Contains(lines[1], "2026.11.2") ||
		strings.Contains(lines[2], "2026.11.2") || !strings.Contains(lines[1], "active by 198.51.100.7") ||
		!strings.Contains(lines[1], "25%") || !strings.Contains(lines[1], "51.5°C") || !strings.Contains(lines[2], "offline") {
		t.Fatalf("robots ls table:\n%s", table)
	}

	var r store.Robot
	if err := json.Unmarshal([]byte(run("robots", "show", "kiwi-01", "-o", "json")), &r); err != nil {
		t.Fatal(err)
	}
	if r.ID != "kiwi-01" || r.Deployment.AgentVersion != "1.4.0" || r.Resources.CPUPercent != 12 || r.Deployment.Image == nil || r.Deployment.Image.Version != "2026.11.2" {
		t.Fatalf("robots show: %+v", r)
	}
	show := run("robots", "show", "kiwi-01")
	for _, want := range []string{"TELEOPERATION", "1.4.0", "IMAGE          2026.11.2", "IMAGE PROFILE  lekiwi", "IMAGE SEED     5b1e0a", "IMAGE BUILT    2026-11-"} {
		if !strings.Contains(show, want) {
			t.Fatalf("robots show table lacks %q:\n%s", want, show)
		}
	}
	if show := run("robots", "show", "kiwi-02"); !strings.Contains(show, "IMAGE          -") || strings.Contains(show, "IMAGE PROFILE") {
		t.Fatalf("robots show of a robot without image:\n%s", show)
	}

	for _, bad := range [][]string{
		{"robots", "show", "kiwi-99"},
		{"robots", "ls", "-o", "yaml"},
		{"robots", "ls", "--state", "sleeping"},
	} {
		if out, err := cli(t, append(bad, "--data-dir", dir)...); err == nil {
			t.Errorf("control %s succeeded:\n%s", strings.Join(bad, " "), out)
		}
	}
}

// syncBuffer is a bytes.Buffer the command writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func decodeLines(t *testing.T, out string) []store.Event {
	t.Helper()
	var evs []store.Event
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var e store.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q is not an event: %v", sc.Text(), err)
		}
		evs = append(evs, e)
	}
	return evs
}

// `control events tail`: the last N events, filters, JSON lines; then it
// follows the log until its context ends (what Ctrl-C does).
func TestEventsTail(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, dir, freeAddr(t))
	seedFleet(t, n.Store())
	all, err := n.Store().Events(context.Background(), 0, 1000, "")
	if err != nil {
		t.Fatal(err)
	}
	newest := all[len(all)-1].Seq

	out, err := cli(t, "events", "tail", "-n", "3", "--follow=false", "-o", "json", "--data-dir", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	evs := decodeLines(t, out)
	if len(evs) != 3 || evs[2].Seq != newest || evs[0].Seq != newest-2 {
		t.Fatalf("tail -n 3: %+v, want the three newest (up to %d)", evs, newest)
	}
	out, err = cli(t, "events", "tail", "--after", "0", "--type", store.TypeRobotEvent, "--robot", "kiwi-01", "--follow=false", "-o", "json", "--data-dir", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if evs := decodeLines(t, out); len(evs) != 1 || evs[0].Type != store.TypeRobotEvent || evs[0].RobotID != "kiwi-01" {
		t.Fatalf("tail --type RobotEvent --robot kiwi-01: %+v", evs)
	}
	out, err = cli(t, "events", "tail", "--follow=false", "--after", "0", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "teleop.started: teleoperation started by 198.51.100.7") {
		t.Fatalf("tail table (%v):\n%s", err, out)
	}

	// Follow: an event recorded after the start is printed; cancelling ends
	// the command without an error.
	root := newRoot()
	buf := &syncBuffer{}
	root.SetOut(buf)
	root.SetErr(buf)
	root.SetArgs([]string{"events", "tail", "-n", "0", "-o", "json", "--interval", "100ms", "--data-dir", dir})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	time.Sleep(300 * time.Millisecond)
	data, _ := json.Marshal(store.DeviceDiscoveredData{Instance: "kiwi-09._lekiwi._tcp.local.", Type: protocol.RobotLeKiwi, Node: "test"})
	if _, err := n.Store().Append(context.Background(), []store.Event{{RobotID: "kiwi-09", Type: store.TypeDeviceDiscovered, Time: time.Now(), Data: data}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), store.TypeDeviceDiscovered) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("tail ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("tail did not end after its context")
	}
	evs = decodeLines(t, buf.String())
	if len(evs) != 1 || evs[0].Type != store.TypeDeviceDiscovered || evs[0].Seq != newest+1 {
		t.Fatalf("followed: %+v, want only the new DeviceDiscovered (seq %d)", evs, newest+1)
	}
}

// Shell completions come from cobra's completion command, and robot ids
// complete from the node.
func TestCompletion(t *testing.T) {
	for shell, want := range map[string]string{"bash": "bash completion", "zsh": "#compdef control", "fish": "complete -c control"} {
		out, err := cli(t, "completion", shell)
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("completion %s (%v): no %q in\n%.300s", shell, err, want, out)
		}
	}
	dir := t.TempDir()
	n := startNode(t, dir, freeAddr(t))
	seedFleet(t, n.Store())
	out, err := cli(t, "__complete", "robots", "show", "--data-dir", dir, "kiwi-0")
	if err != nil || !strings.Contains(out, "kiwi-01\nkiwi-02\n") {
		t.Fatalf("robot id completion (%v):\n%s", err, out)
	}
}
