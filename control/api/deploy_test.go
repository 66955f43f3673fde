package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/deploy"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

func TestDeploymentRoutes(t *testing.T) {
	ta := newTestAPI(t, Options{})
	ctx := context.Background()
	for _, id := range []string{"kiwi-1", "kiwi-2", "kiwi-3"} {
		data, _ := json.Marshal(store.ConnectedData{Session: "s", Node: "n", Type: protocol.RobotLeKiwi})
		if _, err := ta.st.Append(ctx, []store.Event{{RobotID: id, Type: store.TypeRobotConnected, Time: time.Now(), Data: data}}); err != nil {
			t.Fatal(err)
		}
	}
	eng, op := ta.tokens[auth.RoleEngineer], ta.tokens[auth.RoleOperator]
	spec := `{"release":"registry.local/lekiwi@sha256:` + strings.Repeat("e", 64) + `","version":"2.1","strategy":"canary","batch_size":"50%","health":{"timeout_seconds":90,"retries":1},"auto_rollback":true}`
	code, body, _ := ta.call(t, "POST", "/v1/deployments", op, []byte(spec))
	if code != http.StatusForbidden {
		t.Fatalf("operator creates a deployment: %d %s", code, body)
	}
	code, body, _ = ta.call(t, "POST", "/v1/deployments", eng, []byte(spec))
	var d deploy.Deployment
	if code != http.StatusCreated || json.Unmarshal(body, &d) != nil || d.State != deploy.StateRunning || d.Counts.Total != 3 || len(d.Batches) != 2 || d.Batches[0].Size != 1 {
		t.Fatalf("create: %d %s", code, body)
	}
	if d.CreatedBy == "" || !strings.Contains(d.CreatedBy, "engineer") {
		t.Fatalf("created by %q, want the engineer principal", d.CreatedBy)
	}
	code, body, _ = ta.call(t, "GET", "/v1/deployments/"+d.ID, op, nil)
	if code != http.StatusOK || !strings.Contains(string(body), `"robots"`) || !strings.Contains(string(body), `"kiwi-2"`) {
		t.Fatalf("get as operator: %d %s", code, body)
	}
	code, body, _ = ta.call(t, "GET", "/v1/deployments?state=running", op, nil)
	var list struct{ Deployments []deploy.Deployment }
	if code != http.StatusOK || json.Unmarshal(body, &list) != nil || len(list.Deployments) != 1 || list.Deployments[0].Robots != nil {
		t.Fatalf("list: %d %s", code, body)
	}
	for _, tc := range []struct {
		path, body string
		want       int
		state      string
	}{
		{"/pause", `{"reason":"lunch"}`, http.StatusOK, deploy.StatePaused},
		{"/pause", ``, http.StatusConflict, ""},
		{"/resume", ``, http.StatusOK, deploy.StateRunning},
		{"/abort", `{"reason":"wrong release","extra":1}`, http.StatusBadRequest, ""},
		{"/abort", `{"reason":"wrong release"}`, http.StatusOK, deploy.StateAborted},
		{"/rollback", `{}`, http.StatusOK, deploy.StateRollingBack},
	} {
		code, body, _ := ta.call(t, "POST", "/v1/deployments/"+d.ID+tc.path, eng, []byte(tc.body))
		var got deploy.Deployment
		_ = json.Unmarshal(body, &got)
		if code != tc.want || (tc.state != "" && got.State != tc.state) {
			t.Fatalf("%s %s: %d %s", tc.path, tc.body, code, body)
		}
	}
	if code, body, _ := ta.call(t, "GET", "/v1/deployments/dep-missing", op, nil); code != http.StatusNotFound {
		t.Fatalf("unknown deployment: %d %s", code, body)
	}
	for name, bad := range map[string]string{
		"tag":     `{"release":"registry.local/lekiwi:2.1","version":"2.1"}`,
		"unknown": `{"release":"registry.local/lekiwi@sha256:` + strings.Repeat("e", 64) + `","version":"2","target":{"robot_ids":["kiwi-9"]}}`,
		"field":   `{"relase":"x"}`,
	} {
		if code, body, _ := ta.call(t, "POST", "/v1/deployments", eng, []byte(bad)); code != http.StatusBadRequest {
			t.Errorf("%s: %d %s", name, code, body)
		}
	}
	evs, err := ta.st.EventsOfTypes(ctx, 0, 100, deploy.TypePaused)
	if err != nil || len(evs) != 1 || !strings.Contains(evs[0].Actor, "engineer") || !strings.Contains(string(evs[0].Data), "lunch") {
		t.Fatalf("pause event %+v %v", evs, err)
	}
}
