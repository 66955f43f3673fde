package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/control/store/storetest"
	"github.com/lekiwi/heartbeat/protocol"
)

// testAPI is an API over a real store with one token per role.
type testAPI struct {
	st     *store.Store
	srv    *httptest.Server
	tokens map[auth.Role]string
	api    *Server
}

func newTestAPI(t *testing.T, o Options) *testAPI {
	t.Helper()
	st, log := storetest.Open(t), storetest.Logger()
	reg := prometheus.NewRegistry()
	o.Logger, o.Registerer, o.Gatherer = log, reg, reg
	o.Auth = &auth.Authenticator{Tokens: st}
	a, err := New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	a.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	ta := &testAPI{st: st, srv: srv, tokens: map[auth.Role]string{}, api: a}
	for _, role := range auth.Roles() {
		id, secret, full := auth.NewToken()
		if err := st.CreateToken(context.Background(), store.TokenData{ID: id, Name: string(role) + "-user", Role: role, Hash: auth.HashSecret(secret)}, "test", time.Now()); err != nil {
			t.Fatal(err)
		}
		ta.tokens[role] = full
	}
	return ta
}

func newAPI(t *testing.T) (*store.Store, *httptest.Server) {
	ta := newTestAPI(t, Options{})
	adminToken = ta.tokens[auth.RoleAdmin]
	return ta.st, ta.srv
}

// adminToken authenticates the read-only tests' requests.
var adminToken string

func get(t *testing.T, srv *httptest.Server, path string, into any) int {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.Header.Get("Content-Type") != "application/json" && !strings.HasPrefix(path, "/metrics") {
		t.Fatalf("%s: content type %q", path, resp.Header.Get("Content-Type"))
	}
	if into != nil {
		if err := json.Unmarshal(body, into); err != nil {
			t.Fatalf("%s: %v in %s", path, err, body)
		}
	}
	return resp.StatusCode
}

func seed(t *testing.T, st *store.Store) {
	t.Helper()
	ctx := context.Background()
	now := time.Now().UTC()
	for i := 0; i < 5; i++ {
		id := fmt.Sprintf("robot-%d", i)
		typ := protocol.RobotLeKiwi
		if i%2 == 1 {
			typ = protocol.RobotXLE
		}
		data, _ := json.Marshal(store.ConnectedData{Session: id, Type: typ})
		if _, err := st.Append(ctx, []store.Event{{RobotID: id, Type: store.TypeRobotConnected, Time: now, Data: data}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Append(ctx, []store.Event{{RobotID: "robot-4", Type: store.TypeRobotOffline, Time: now, Data: json.RawMessage(`{}`)}}); err != nil {
		t.Fatal(err)
	}
}

func TestRobotsListingFiltersAndPages(t *testing.T) {
	st, srv := newAPI(t)
	seed(t, st)
	var all RobotList
	if code := get(t, srv, "/v1/robots", &all); code != 200 || len(all.Robots) != 5 || all.Next != "" {
		t.Fatalf("all: %d %+v", code, all)
	}
	var online RobotList
	get(t, srv, "/v1/robots?state=online", &online)
	if len(online.Robots) != 4 {
		t.Fatalf("online = %d, want 4", len(online.Robots))
	}
	var xle RobotList
	get(t, srv, "/v1/robots?type=xle", &xle)
	if len(xle.Robots) != 2 || xle.Robots[0].ID != "robot-1" || xle.Robots[1].ID != "robot-3" {
		t.Fatalf("xle = %+v", xle.Robots)
	}
	// Paging visits every robot once.
	seen := map[string]bool{}
	after := ""
	for pages := 0; ; pages++ {
		var page RobotList
		get(t, srv, "/v1/robots?limit=2&after="+after, &page)
		for _, r := range page.Robots {
			if seen[r.ID] {
				t.Fatalf("robot %s on two pages", r.ID)
			}
			seen[r.ID] = true
		}
		if page.Next == "" || pages > 5 {
			break
		}
		after = page.Next
	}
	if len(seen) != 5 {
		t.Fatalf("paged through %d robots, want 5", len(seen))
	}
	var one store.Robot
	if code := get(t, srv, "/v1/robots/robot-3", &one); code != 200 || one.Type != protocol.RobotXLE || one.Status.State != store.StateOnline {
		t.Fatalf("robot-3: %d %+v", code, one)
	}
}

func TestEventsPaging(t *testing.T) {
	st, srv := newAPI(t)
	seed(t, st)
	var seqs []int64
	after := int64(0)
	for {
		var page EventPage
		if code := get(t, srv, fmt.Sprintf("/v1/events?after=%d&limit=4", after), &page); code != 200 {
			t.Fatalf("code %d", code)
		}
		for _, e := range page.Events {
			seqs = append(seqs, e.Seq)
		}
		if len(page.Events) == 0 {
			if page.Next != after {
				t.Fatalf("empty page moved the cursor to %d", page.Next)
			}
			break
		}
		after = page.Next
	}
	if len(seqs) != 14 { // 3 tokens + 5 registered + 5 connected + 1 offline
		t.Fatalf("got %d events, want 14", len(seqs))
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("sequences out of order: %v", seqs)
		}
	}
	var robot EventPage
	get(t, srv, "/v1/events?robot=robot-4", &robot)
	if len(robot.Events) != 3 || robot.Events[2].Type != store.TypeRobotOffline {
		t.Fatalf("robot-4 events %+v", robot.Events)
	}
}

func TestErrorsAreJSONWithCodes(t *testing.T) {
	_, srv := newAPI(t)
	tests := []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/robots/nobody", 404, "not_found"},
		{"/v1/robots/Not_Valid", 400, "bad_request"},
		{"/v1/robots?state=sleeping", 400, "bad_request"},
		{"/v1/robots?type=drone", 400, "bad_request"},
		{"/v1/robots?limit=0", 400, "bad_request"},
		{"/v1/robots?limit=abc", 400, "bad_request"},
		{"/v1/events?after=-1", 400, "bad_request"},
		{"/v1/events?limit=100000", 400, "bad_request"},
		{"/v1/nothing", 404, "not_found"},
	}
	for _, tc := range tests {
		var body protocol.ErrorBody
		if code := get(t, srv, tc.path, &body); code != tc.status || body.Error.Code != tc.code || body.Error.Message == "" {
			t.Errorf("%s: %d %+v, want %d %s", tc.path, code, body, tc.status, tc.code)
		}
	}
}

func TestHealthReadyAndMetrics(t *testing.T) {
	_, srv := newAPI(t)
	var h map[string]string
	if code := get(t, srv, "/healthz", &h); code != 200 || h["status"] != "ok" {
		t.Fatalf("healthz %d %v", code, h)
	}
	if code := get(t, srv, "/readyz", &h); code != 200 || h["status"] != "ready" {
		t.Fatalf("readyz %d %v", code, h)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `lekiwi_control_api_request_seconds_count{code="200",route="/readyz"} 1`) {
		t.Fatalf("metrics lack the readyz latency sample:\n%s", body)
	}
}
