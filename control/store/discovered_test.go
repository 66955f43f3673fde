package store

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// A DeviceDiscovered event names a robot but is unauthenticated news from
// the network: it is kept in the log and creates or changes no robot.
func TestDeviceDiscoveredStaysOutOfRobots(t *testing.T) {
	s := openSingle(t)
	ctx := context.Background()
	data, _ := json.Marshal(DeviceDiscoveredData{Instance: "lekiwi-77._lekiwi._tcp.local.", Type: protocol.RobotLeKiwi, Address: "192.0.2.7", Port: 22, Node: "n1"})
	res, err := s.Append(ctx, []Event{{RobotID: "lekiwi-77", Type: TypeDeviceDiscovered, Time: time.Now(), Data: data}})
	if err != nil || len(res) != 1 || res[0].Seq == 0 {
		t.Fatalf("append: %v %+v", err, res)
	}
	if _, err := s.Robot(ctx, "lekiwi-77"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("robot after DeviceDiscovered: %v, want not found", err)
	}
	evs, err := s.Events(ctx, 0, 10, "lekiwi-77")
	if err != nil || len(evs) != 1 || evs[0].Type != TypeDeviceDiscovered {
		t.Fatalf("events %+v, %v", evs, err)
	}
}
