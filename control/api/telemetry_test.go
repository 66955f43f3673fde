package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/telemetry"
	"github.com/lekiwi/heartbeat/protocol"
)

func TestTelemetryRoutes(t *testing.T) {
	now := time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)
	ta := newTestAPI(t, Options{Now: func() time.Time { return now }})
	ctx := context.Background()
	// Kiwi-1 reports every minute for the last 30 minutes: cpu = minute
	// index, disk 95 % (over the default disk rule).
	for i := range 30 {
		at := now.Add(time.Duration(i-30) * time.Minute)
		tel := protocol.Telemetry{Resources: protocol.Resources{CPUPercent: float64(i), DiskUsedBytes: 95, DiskTotalBytes: 100}}
		data, _ := json.Marshal(tel)
		if _, err := ta.st.Append(ctx, []store.Event{{RobotID: "kiwi-1", Type: store.TypeTelemetryReported, Time: at, Data: data}}); err != nil {
			t.Fatal(err)
		}
	}
	tel, err := telemetry.New(ta.st, telemetry.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tel.Pass(ctx, telemetry.DefaultRules().Rules, nil); err != nil {
		t.Fatal(err)
	}
	op := ta.tokens[auth.RoleOperator]
	get := func(path string, want int) []byte {
		t.Helper()
		code, body, _ := ta.call(t, "GET", path, op, nil)
		if code != want {
			t.Fatalf("GET %s: %d %s, want %d", path, code, body, want)
		}
		return body
	}
	var res telemetry.Result
	body := get("/v1/robots/kiwi-1/telemetry?metric=cpu&from=-30m&step=10m", http.StatusOK)
	if err := json.Unmarshal(body, &res); err != nil {
		t.Fatal(err)
	}
	if res.Resolution != telemetry.Minute || len(res.Series) != 1 || len(res.Series[0].Points) != 3 {
		t.Fatalf("10-minute steps over 30 minutes: %s", body)
	}
	if p := res.Series[0].Points[2]; p.Count != 10 || p.Min != 20 || p.Max != 29 || p.Avg != 24.5 {
		t.Fatalf("last point %+v", p)
	}
	body = get("/v1/robots/kiwi-1/telemetry?from="+url.QueryEscape(now.Add(-5*time.Minute).Format(time.RFC3339))+"&to="+url.QueryEscape(now.Format(time.RFC3339))+"&step=30s&metric=cpu,disk", http.StatusOK)
	if err := json.Unmarshal(body, &res); err != nil || res.Resolution != telemetry.Raw || len(res.Series) != 2 || len(res.Series[1].Points) != 5 || res.Series[1].Points[0].Avg != 95 {
		t.Fatalf("raw query: %s", body)
	}
	body = get("/v1/telemetry?metric=disk&from=-1h&step=1h", http.StatusOK)
	res = telemetry.Result{}
	if err := json.Unmarshal(body, &res); err != nil || res.Resolution != telemetry.Hour || res.RobotID != "" {
		t.Fatalf("fleet query: %s", body)
	}
	get("/v1/robots/kiwi-9/telemetry", http.StatusNotFound)
	for _, bad := range []string{"?metric=voltage", "?from=yesterday", "?from=%2B1h", "?step=-1m", "?step=fast", "?from=-1m&to=-2m", "?from=-720h&step=1s&to=" + url.QueryEscape(now.Add(20000*time.Hour).Format(time.RFC3339))} {
		get("/v1/robots/kiwi-1/telemetry"+bad, http.StatusBadRequest)
	}
	var alerts struct{ Alerts []telemetry.FiringAlert }
	body = get("/v1/alerts", http.StatusOK)
	if err := json.Unmarshal(body, &alerts); err != nil || len(alerts.Alerts) != 1 || alerts.Alerts[0].Rule != "disk-full" || alerts.Alerts[0].RobotID != "kiwi-1" {
		t.Fatalf("alerts: %s", body)
	}
	if code, _, _ := ta.call(t, "GET", "/v1/alerts", "", nil); code != http.StatusUnauthorized {
		t.Fatalf("alerts without a token: %d", code)
	}
}
