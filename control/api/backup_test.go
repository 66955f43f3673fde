package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
)

func TestBackupOverTheAPIAndTheAdminSocket(t *testing.T) {
	ta := newTestAPI(t, Options{})
	seed(t, ta.st)
	// More events than one page of the snapshot.
	ctx := context.Background()
	for i := 0; i < 40; i++ {
		var evs []store.Event
		for j := 0; j < 50; j++ {
			evs = append(evs, store.Event{RobotID: fmt.Sprintf("robot-%d", j%5), Type: store.TypeTelemetryReported, Time: time.Now().UTC(),
				Data: json.RawMessage(fmt.Sprintf(`{"uptime_seconds":%d}`, i*50+j))})
		}
		if _, err := ta.st.Append(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	last, err := ta.st.LastSeq(ctx)
	if err != nil {
		t.Fatal(err)
	}
	local := httptest.NewServer(ta.api.LocalHandler())
	defer local.Close()
	tests := []struct {
		name, base, token string
		want              int
	}{
		{"admin token", ta.srv.URL, ta.tokens[auth.RoleAdmin], http.StatusOK},
		{"admin socket, no token", local.URL, "", http.StatusOK},
		{"engineer token", ta.srv.URL, ta.tokens[auth.RoleEngineer], http.StatusForbidden},
		{"no token", ta.srv.URL, "", http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", tc.base+"/v1/admin/backup", nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.want != http.StatusOK {
				return
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
				t.Fatalf("content type %q", ct)
			}
			if cd := resp.Header.Get("Content-Disposition"); !strings.HasPrefix(cd, `attachment; filename="heartbeat-`) {
				t.Fatalf("content disposition %q", cd)
			}
			hdr, err := store.CheckBackup(resp.Body, nil)
			if err != nil {
				t.Fatalf("the streamed backup does not check: %v", err)
			}
			if hdr.LastSeq != last || hdr.Events != last || hdr.Node != ta.st.Address() {
				t.Fatalf("header %+v, log ends at %d", hdr, last)
			}
		})
	}
}

func TestStorageUseOverTheAPI(t *testing.T) {
	ta := newTestAPI(t, Options{})
	seed(t, ta.st)
	ctx := context.Background()
	big := json.RawMessage(`{"network":{"hostname":"` + strings.Repeat("x", 5000) + `"}}`)
	if _, err := ta.st.Append(ctx, []store.Event{{RobotID: "robot-3", Type: store.TypeTelemetryReported, Time: time.Now().UTC(), Data: big}}); err != nil {
		t.Fatal(err)
	}
	adminToken = ta.tokens[auth.RoleAdmin]
	var rep StorageReport
	if code := get(t, ta.srv, "/v1/admin/storage?limit=2", &rep); code != 200 {
		t.Fatalf("status %d", code)
	}
	if rep.DatabaseBytes <= 0 || rep.FreeBytes < 0 || len(rep.Robots) != 2 || !rep.More || rep.Robots[0].RobotID != "robot-3" ||
		rep.Robots[0].TelemetryBytes != int64(len(big)) || rep.Robots[0].DataBytes < rep.Robots[1].DataBytes || rep.DataBytes < rep.Robots[0].DataBytes {
		t.Fatalf("storage report %+v", rep)
	}
	var eb protocol.ErrorBody
	if code := get(t, ta.srv, "/v1/admin/storage?window=soon", &eb); code != 400 || !strings.Contains(eb.Error.Message, "window") {
		t.Fatalf("bad window: %d %+v", code, eb)
	}
	var all StorageReport
	get(t, ta.srv, "/v1/admin/storage", &all)
	if len(all.Robots) != 5 || all.More {
		t.Fatalf("all robots: %+v", all)
	}
}
