package profiles

import (
	"strings"
	"testing"
)

func span(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func bus(dev string, ids ...int) ObservedBus { return ObservedBus{Device: dev, IDs: ids} }

func TestMatchHardware(t *testing.T) {
	acm0, acm1, acm2, usb0 := "/dev/ttyACM0", "/dev/ttyACM1", "/dev/ttyACM2", "/dev/ttyUSB0"
	for _, tc := range []struct {
		name    string
		buses   []ObservedBus
		profile string   // "" = held
		devices []string // matched: device per profile bus, in profile order
		leaders []string
		only    string   // match against this embedded profile alone
		reason  []string // held: substrings the reason must contain
	}{
		{name: "lekiwi", buses: []ObservedBus{bus(acm0, span(1, 9)...)}, profile: "lekiwi", devices: []string{acm0}},
		{name: "lekiwi, IDs out of order and repeated", buses: []ObservedBus{bus(acm0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 1)}, profile: "lekiwi", devices: []string{acm0}},
		{name: "xle", buses: []ObservedBus{bus(acm0, span(1, 8)...), bus(acm1, span(1, 9)...)}, profile: "xle", devices: []string{acm0, acm1}},
		{name: "xle, buses enumerated the other way round", buses: []ObservedBus{bus(acm0, span(1, 9)...), bus(acm1, span(1, 8)...)}, profile: "xle", devices: []string{acm1, acm0}},
		{name: "lekiwi with a leader arm attached", buses: []ObservedBus{bus(acm0, span(1, 6)...), bus(acm1, span(1, 9)...)},
			profile: "lekiwi", devices: []string{acm1}, leaders: []string{acm0}},
		{name: "xle with a leader arm and a silent port", buses: []ObservedBus{bus(acm0, span(1, 9)...), bus(usb0, span(1, 6)...), bus(acm1, span(1, 8)...), bus(acm2)},
			profile: "xle", devices: []string{acm1, acm0}, leaders: []string{usb0}},
		{name: "xle missing motor 9 on its second bus", buses: []ObservedBus{bus(acm0, span(1, 8)...), bus(acm1, span(1, 8)...)},
			reason: []string{"found 8 motors (IDs 1-8) on /dev/ttyACM1, xle needs 9 (IDs 1-9) on its second bus (right-arm+base): no answer from ID 9"}},
		{name: "lekiwi missing a motor", buses: []ObservedBus{bus(acm0, 1, 2, 3, 4, 6, 7, 8, 9)},
			reason: []string{"found 8 motors (IDs 1-4, 6-9) on /dev/ttyACM0, lekiwi needs 9 (IDs 1-9) on its bus (arm+base): no answer from ID 5"}},
		{name: "lekiwi with an extra bus", buses: []ObservedBus{bus(acm0, span(1, 9)...), bus(acm1, 1, 2, 3)},
			reason: []string{"found 3 motors (IDs 1-3) on /dev/ttyACM1", "not lekiwi either: it has 1 servo bus, found 2"}},
		{name: "lekiwi with an extra bus, tried as lekiwi only", buses: []ObservedBus{bus(acm0, span(1, 9)...), bus(acm1, 1, 2, 3)}, only: "lekiwi",
			reason: []string{"found 2 servo buses, lekiwi has 1: unplug /dev/ttyACM1 (3 motors (IDs 1-3)) or check that this is a lekiwi"}},
		{name: "three full buses", buses: []ObservedBus{bus(acm0, span(1, 9)...), bus(acm1, span(1, 8)...), bus(acm2, span(1, 9)...)},
			reason: []string{"found 3 servo buses, xle has 2: unplug /dev/ttyACM"}},
		{name: "xle with one bus unplugged", buses: []ObservedBus{bus(acm0, span(1, 8)...)},
			reason: []string{"lekiwi needs 9 (IDs 1-9) on its bus (arm+base): no answer from ID 9", "not xle either: it has 2 servo buses, found 1"}},
		{name: "xle with one bus unplugged, tried as xle only", buses: []ObservedBus{bus(acm0, span(1, 8)...)}, only: "xle",
			reason: []string{"xle needs a second bus (right-arm+base) answering IDs 1-9, and no such bus answered"}},
		{name: "motor with a wrong ID", buses: []ObservedBus{bus(acm0, 1, 2, 3, 4, 5, 6, 7, 8, 12)},
			reason: []string{"no answer from ID 9", "ID 12 should not be on this bus"}},
		{name: "no buses", buses: nil, reason: []string{"no servo bus answered: no servo adapter found"}},
		{name: "only a leader arm", buses: []ObservedBus{bus(acm0, span(1, 6)...)}, leaders: []string{acm0},
			reason: []string{"only a leader arm (IDs 1-6) on /dev/ttyACM0", "no servo adapter found"}},
		{name: "motors unpowered", buses: []ObservedBus{bus(acm0), bus(acm1)},
			reason: []string{"no motor answered on /dev/ttyACM0, /dev/ttyACM1: check the motors' power supply"}},
		{name: "two motors sharing ID 1", buses: []ObservedBus{{Device: acm0, IDs: span(2, 9), Garbled: []int{1}}},
			reason: []string{"no answer from ID 1", "ID 1 on /dev/ttyACM0 gave a garbled reply: two motors probably share ID 1"}},
		{name: "port that cannot be opened", buses: []ObservedBus{{Device: acm0, Error: "permission denied"}},
			reason: []string{"no servo bus answered", "/dev/ttyACM0 could not be used (permission denied)"}},
		{name: "garbled leader-shaped bus is not a leader", buses: []ObservedBus{{Device: acm0, IDs: span(1, 6), Garbled: []int{7}}},
			reason: []string{"found 6 motors (IDs 1-6) on /dev/ttyACM0", "ID 7 on /dev/ttyACM0 gave a garbled reply"}},
		{name: "seven buses", buses: []ObservedBus{bus("a", 1), bus("b", 1), bus("c", 1), bus("d", 1), bus("e", 1), bus("f", 1), bus("g", 1)},
			reason: []string{"found 7 servo buses; no robot has more than 6"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := MatchEmbedded(tc.buses)
			if tc.only != "" {
				var p *Profile
				if p, err = Load(tc.only); err == nil {
					m = MatchHardware(tc.buses, []*Profile{p})
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(m.LeaderArms, ",") != strings.Join(tc.leaders, ",") {
				t.Errorf("leader arms %v, want %v", m.LeaderArms, tc.leaders)
			}
			if tc.profile != "" {
				if m.Held() || m.Profile.Name != tc.profile || m.Reason != "" {
					t.Fatalf("got profile %v (reason %q), want %s", m.Profile, m.Reason, tc.profile)
				}
				var devs []string
				for _, b := range m.Buses {
					devs = append(devs, b.Device)
				}
				if strings.Join(devs, ",") != strings.Join(tc.devices, ",") {
					t.Errorf("buses %v, want %v", devs, tc.devices)
				}
				return
			}
			if !m.Held() {
				t.Fatalf("matched %s, want held", m.Profile.Name)
			}
			for _, want := range tc.reason {
				if !strings.Contains(m.Reason, want) {
					t.Errorf("reason %q\n lacks %q", m.Reason, want)
				}
			}
		})
	}
}

func TestMatchHardwareProfileSets(t *testing.T) {
	lk, err := Load("lekiwi")
	if err != nil {
		t.Fatal(err)
	}
	twin := *lk
	twin.Name = "lekiwi-twin"
	one := []ObservedBus{bus("/dev/ttyACM0", span(1, 9)...)}
	if m := MatchHardware(one, []*Profile{lk, &twin}); !m.Held() || !strings.Contains(m.Reason, "several profiles (lekiwi, lekiwi-twin)") {
		t.Errorf("ambiguous profiles: %+v", m)
	}
	bare := *lk
	bare.Hardware.Buses = nil
	if m := MatchHardware(one, []*Profile{&bare}); !m.Held() || !strings.Contains(m.Reason, "no profile describes any servo buses") {
		t.Errorf("profiles without buses: %+v", m)
	}
	if m := MatchHardware(one, nil); !m.Held() {
		t.Errorf("no profiles: %+v", m)
	}
}

func TestFormatIDs(t *testing.T) {
	for want, ids := range map[string][]int{"": nil, "1": {1}, "1-9": span(1, 9), "1-4, 6-9": {1, 2, 3, 4, 6, 7, 8, 9}, "3, 5, 7-8": {3, 5, 7, 8}} {
		if got := formatIDs(ids); got != want {
			t.Errorf("formatIDs(%v) = %q, want %q", ids, got, want)
		}
	}
}
