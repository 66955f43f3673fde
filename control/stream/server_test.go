package stream

import "testing"

func TestParseRequest(t *testing.T) {
	cases := []struct {
		in   string
		ok   bool
		kind string
	}{
		{`{"type":"subscribe","id":"a","topics":["robot.*.heartbeat"],"throttle":{"rate":2,"strategy":"latest"}}`, true, "subscribe"},
		{`{"type":"unsubscribe","id":"a"}`, true, "unsubscribe"},
		{`{"type":"ping"}`, true, "ping"},
		{`{"type":"unsubscribe"}`, false, ""},
		{`{"type":"subscribe","id":"a","topics":[]}`, false, ""},
		{`{"type":"subscribe","id":"a","topics":["x"],"throttle":{"rate":"fast"}}`, false, ""},
		{`{"type":"publish"}`, false, ""},
		{`{"type":"ping"} {"type":"ping"}`, false, ""},
		{`[`, false, ""},
	}
	for _, c := range cases {
		r, err := ParseRequest([]byte(c.in))
		if (err == nil) != c.ok || (c.ok && r.Type != c.kind) {
			t.Errorf("ParseRequest(%s) = %+v, %v; want ok=%v", c.in, r, err, c.ok)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"type":"subscribe","id":"a","topics":["robot.*.heartbeat"],"robots":["r1"],"kinds":["k"],"throttle":{"rate":2,"strategy":"aggregate"}}`))
	f.Add([]byte(`{"type":"unsubscribe","id":"a"}`))
	f.Add([]byte(`{"type":"ping"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRequest(data)
		if err != nil || r.Type != "subscribe" {
			return
		}
		// Whatever parses must subscribe.
		h := NewHub(Options{})
		c, err := h.Attach()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Subscribe(r.Subscription); err != nil {
			t.Fatalf("parsed subscription refused: %v", err)
		}
	})
}
