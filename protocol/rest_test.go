package protocol

import (
	"encoding/json"
	"testing"
	"time"
)

// TestRESTJSON pins the JSON of the REST bodies: control and its clients
// (agent, provision, netboot) are released separately, so a renamed field
// or a changed omitempty breaks a fleet. The golden strings are what the
// bodies encoded to before they moved here from control/api, control/auth,
// control/store and netboot/station.
func TestRESTJSON(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	for _, tc := range []struct {
		name string
		v    any
		want string
	}{
		{"error body", ErrorBody{Error: ErrorDetail{Code: EnrollTokenUsed, Message: "this enrollment token was already used"}},
			`{"error":{"code":"token_used","message":"this enrollment token was already used"}}`},
		{"enrollment request", EnrollmentRequest{RobotID: "lekiwi-abc"}, `{"robot_id":"lekiwi-abc"}`},
		{"enrollment request with ttl", EnrollmentRequest{RobotID: "lekiwi-abc", TTL: "1h0m0s"}, `{"robot_id":"lekiwi-abc","ttl":"1h0m0s"}`},
		{"enrollment created", EnrollmentCreated{RobotID: "lekiwi-abc", Token: "lke_x", ExpiresAt: at},
			`{"robot_id":"lekiwi-abc","token":"lke_x","expires_at":"2026-03-04T05:06:07Z"}`},
		{"ca certificate", CACertificate{Certificate: "PEM"}, `{"certificate":"PEM"}`},
		{"whoami", Whoami{Name: "alice", Role: "engineer", Source: "token"}, `{"name":"alice","role":"engineer","source":"token"}`},
		{"whoami with token", Whoami{Name: "alice", Role: "engineer", TokenID: "t1", Source: "token"},
			`{"name":"alice","role":"engineer","token_id":"t1","source":"token"}`},
		{"robot status", RobotStatus{State: RobotOnline}, `{"state":"online","connected":false,"uptime_seconds":0}`},
		{"robot status full", RobotStatus{State: RobotOnline, Connected: true, Node: "n1", Session: "s1", Since: at, LastSeen: at, UptimeSeconds: 12.5},
			`{"state":"online","connected":true,"node":"n1","session":"s1","since":"2026-03-04T05:06:07Z","last_seen":"2026-03-04T05:06:07Z","uptime_seconds":12.5}`},
		{"station error", StationErrorBody{Error: "unknown board"}, `{"error":"unknown board"}`},
		{"enroll request", EnrollRequest{Token: "lke_x", CSR: "PEM"}, `{"token":"lke_x","csr":"PEM"}`},
		{"enroll response", EnrollResponse{Certificate: "LEAF", CACertificate: "CA", NotAfter: at},
			`{"certificate":"LEAF","ca_certificate":"CA","not_after":"2026-03-04T05:06:07Z"}`},
		{"factory robot request", FactoryRobotRequest{Serial: "10000000abcd", Profile: "lekiwi"}, `{"serial":"10000000abcd","profile":"lekiwi"}`},
		{"factory robot", FactoryRobot{RobotID: "lekiwi-10000000abcd", Token: "lke_x", ExpiresAt: at, CA: "PEM"},
			`{"robot_id":"lekiwi-10000000abcd","token":"lke_x","expires_at":"2026-03-04T05:06:07Z","ca":"PEM"}`},
	} {
		got, err := json.Marshal(tc.v)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if string(got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}
