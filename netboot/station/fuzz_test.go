package station

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzBoardAPI throws arbitrary bodies at the report and progress
// handlers with a valid token: the station answers 200, 204 or 400, never
// panics, and the plan stays one of the four actions.
func FuzzBoardAPI(f *testing.F) {
	for _, r := range []any{lekiwiReport("d83add01"), xleReport("d83add01")} {
		raw, _ := json.Marshal(r)
		f.Add(raw, false)
	}
	f.Add([]byte(`{"servo_buses":[{"device":"","ids":[-1,300]}]}`), false)
	f.Add([]byte(`{"board":{"serial":"zz"}}`), false)
	f.Add([]byte(`{"step":"install","status":"done","done":-5}`), true)
	f.Add([]byte(`{"step":"reboot","status":"failed","detail":"\u0000"}`), true)
	f.Add([]byte(`null`), true)

	b := newBench(f)
	st := b.start(f, newFakeControl())
	token, _, _ := st.netboot(f, "d83add01")
	h := st.Handler()
	f.Fuzz(func(t *testing.T, body []byte, progress bool) {
		path := "/factory/v1/report"
		if progress {
			path = "/factory/v1/progress"
		}
		req := httptest.NewRequest("POST", path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusNoContent, http.StatusBadRequest:
		default:
			t.Fatalf("%s %q: %d %s", path, body, rec.Code, rec.Body)
		}
		req = httptest.NewRequest("GET", "/factory/v1/plan", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var plan struct{ Action string }
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &plan) != nil {
			t.Fatalf("plan: %d %s", rec.Code, rec.Body)
		}
		switch plan.Action {
		case "wait", "hold", "install", "done":
		default:
			t.Fatalf("plan action %q", plan.Action)
		}
	})
}
