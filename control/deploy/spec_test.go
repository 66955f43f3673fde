package deploy

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestSize(t *testing.T) {
	for _, tc := range []struct {
		in      string
		n, want int
		err     bool
	}{
		{"5", 50, 5, false}, {"5", 3, 3, false}, {"10%", 50, 5, false}, {"30%", 50, 15, false},
		{"10%", 3, 1, false}, {"12.5%", 10, 2, false}, {"100%", 7, 7, false}, {"1%", 1, 1, false},
		{"0", 1, 0, true}, {"-3", 1, 0, true}, {"101%", 1, 0, true}, {"x%", 1, 0, true}, {"", 1, 0, true}, {"NaN%", 1, 0, true},
	} {
		s, err := ParseSize(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("ParseSize(%q) error %v", tc.in, err)
			continue
		}
		if err == nil && s.Of(tc.n) != tc.want {
			t.Errorf("%q of %d = %d, want %d", tc.in, tc.n, s.Of(tc.n), tc.want)
		}
	}
	var spec struct{ A, B, C Size }
	if err := json.Unmarshal([]byte(`{"A": "10%", "B": 3, "C": ""}`), &spec); err != nil || spec.A.Percent != 10 || spec.B.Count != 3 || !spec.C.IsZero() {
		t.Fatalf("json %+v %v", spec, err)
	}
	if b, _ := json.Marshal(spec); string(b) != `{"A":"10%","B":"3","C":""}` {
		t.Fatalf("marshal %s", b)
	}
}

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		n    int
		want string
	}{
		{Spec{BatchSize: Size{Count: 3}}, 10, "[3 3 3 1]"},
		{Spec{}, 50, "[5 5 5 5 5 5 5 5 5 5]"},
		{Spec{Strategy: Canary, BatchSize: Size{Percent: 20}}, 50, "[1 10 10 10 10 9]"},
		{Spec{Strategy: Canary, Canary: Size{Percent: 10}, BatchSize: Size{Count: 25}}, 50, "[5 25 20]"},
		{Spec{Strategy: BlueGreen}, 1, "[1]"},
		{Spec{Strategy: BlueGreen}, 50, "[25 25]"},
		{Spec{}, 0, "[]"},
	} {
		if got := fmt.Sprint(tc.spec.withDefaults().plan(tc.n)); got != tc.want {
			t.Errorf("%+v of %d: %s, want %s", tc.spec, tc.n, got, tc.want)
		}
	}
}

func TestWindow(t *testing.T) {
	day, night := &Window{StartHour: 9, EndHour: 17}, &Window{StartHour: 22, EndHour: 4}
	for _, tc := range []struct {
		w    *Window
		hour int
		want bool
	}{
		{nil, 3, true}, {day, 9, true}, {day, 16, true}, {day, 17, false}, {day, 3, false},
		{night, 22, true}, {night, 23, true}, {night, 0, true}, {night, 3, true}, {night, 4, false}, {night, 12, false},
	} {
		if got := tc.w.Contains(tc.hour); got != tc.want {
			t.Errorf("%+v contains %d = %v", tc.w, tc.hour, got)
		}
	}
}

func TestValidate(t *testing.T) {
	good := Spec{Release: "registry.local:5000/lekiwi/os@sha256:" + strings.Repeat("0f", 32), Version: "1.2.3"}
	if err := good.withDefaults().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Spec){
		"tag not digest": func(s *Spec) { s.Release = "registry.local/lekiwi:latest" },
		"no version":     func(s *Spec) { s.Version = "" },
		"strategy":       func(s *Spec) { s.Strategy = "yolo" },
		"profile":        func(s *Spec) { s.Target.Profile = "roomba" },
		"robot id":       func(s *Spec) { s.Target.RobotIDs = []string{"../etc"} },
		"window":         func(s *Spec) { s.Window = &Window{StartHour: 3, EndHour: 3} },
		"on failure":     func(s *Spec) { s.OnFailure = "panic" },
		"negative rate":  func(s *Spec) { s.PerMinute = -1 },
		"after first":    func(s *Spec) { s.AfterFirst = "later" },
	} {
		s := good
		mut(&s)
		if err := s.withDefaults().Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzSpec decodes a deployment request as the API does: no input may
// panic, and an accepted spec must plan exactly its robots.
func FuzzSpec(f *testing.F) {
	f.Add([]byte(`{"release":"r/x@sha256:`+strings.Repeat("a", 64)+`","version":"1","strategy":"canary","canary":"10%","batch_size":3}`), 17)
	f.Add([]byte(`{"batch_size":"0.0001%","strategy":"blue-green"}`), 2000)
	f.Fuzz(func(t *testing.T, body []byte, n int) {
		var s Spec
		if json.Unmarshal(body, &s) != nil {
			return
		}
		s = s.withDefaults()
		if s.Validate() != nil {
			return
		}
		n = max(0, n%(MaxTargets+1))
		total := 0
		for _, b := range s.plan(n) {
			if b <= 0 {
				t.Fatalf("empty batch in plan of %d: %v", n, s.plan(n))
			}
			total += b
		}
		if total != n {
			t.Fatalf("plan of %d robots covers %d", n, total)
		}
	})
}
