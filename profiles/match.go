package profiles

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// ObservedBus is one servo bus as a hardware probe saw it (see
// protocol.ServoBus, which the station converts from).
type ObservedBus struct {
	Device string // "/dev/ttyACM0"
	// IDs answered a ping.
	IDs []int
	// Garbled IDs answered with a bad checksum (two servos sharing an ID).
	Garbled []int
	// Error is set when the port could not be used.
	Error string
}

// LeaderArm are the IDs of an SO-101 leader arm: a technician's
// teleoperation arm, plugged in for testing, and not part of the robot.
var LeaderArm = IDRange{From: 1, To: 6}

// maxBuses bounds the assignment search (n! permutations).
const maxBuses = 6

// Match is the outcome of matching observed hardware against profiles.
type Match struct {
	// Profile is the matching profile; nil when the robot is held.
	Profile *Profile
	// Buses pairs each of the profile's buses with the device that
	// answers its IDs, in the profile's order.
	Buses []MatchedBus
	// LeaderArms are devices ignored as leader arms.
	LeaderArms []string
	// Reason says why the robot is held, in words a technician can act
	// on; empty when matched.
	Reason string
}

// MatchedBus is one profile bus and the device found for it.
type MatchedBus struct {
	Bus    Bus
	Device string
}

// Held reports whether no profile matched.
func (m Match) Held() bool { return m.Profile == nil }

// MatchEmbedded matches against every embedded profile.
func MatchEmbedded(buses []ObservedBus) (Match, error) {
	ps, err := LoadAll()
	if err != nil {
		return Match{}, fmt.Errorf("match hardware: %w", err)
	}
	return MatchHardware(buses, ps), nil
}

// MatchHardware decides which profile the observed servo buses belong to.
// A profile matches when the buses answering pings pair up one to one with
// its hardware.buses, each answering exactly its IDs. Buses answering only
// the leader arm's IDs 1-6, and serial ports where nothing answered, are
// not part of the robot and do not count. Anything else holds the robot,
// with a Reason naming the device, what it answered and what the closest
// profile needs there.
func MatchHardware(buses []ObservedBus, profiles []*Profile) Match {
	var m Match
	var followers []ObservedBus
	var silent, broken, notes []string
	for _, b := range buses {
		ids := sortedSet(b.IDs)
		switch {
		case b.Error != "":
			broken = append(broken, fmt.Sprintf("%s could not be used (%s)", b.Device, b.Error))
		case len(b.Garbled) == 0 && equalRange(ids, LeaderArm):
			m.LeaderArms = append(m.LeaderArms, b.Device)
		case len(ids) == 0 && len(b.Garbled) == 0:
			silent = append(silent, b.Device)
		default:
			followers = append(followers, ObservedBus{Device: b.Device, IDs: ids, Garbled: sortedSet(b.Garbled)})
		}
	}
	for _, f := range followers {
		for _, id := range f.Garbled {
			notes = append(notes, fmt.Sprintf("ID %d on %s gave a garbled reply: two motors probably share ID %d (new motors come set to ID 1); give each motor its own ID", id, f.Device, id))
		}
	}
	notes = append(notes, broken...)

	if len(followers) == 0 {
		msg := "no servo bus answered"
		if len(m.LeaderArms) > 0 {
			msg += fmt.Sprintf("; only a leader arm (IDs %s) on %s, which does not count", LeaderArm, strings.Join(m.LeaderArms, ", "))
		}
		if len(silent) > 0 {
			msg += fmt.Sprintf("; no motor answered on %s: check the motors' power supply and the cable from the servo adapter to the first motor", strings.Join(silent, ", "))
		} else if len(broken) == 0 {
			msg += ": no servo adapter found; plug the robot's servo adapter(s) into the Pi's USB ports"
		}
		m.Reason = withNotes(msg, notes)
		return m
	}
	if len(followers) > maxBuses {
		m.Reason = withNotes(fmt.Sprintf("found %d servo buses; no robot has more than %d: unplug what does not belong to the robot", len(followers), maxBuses), notes)
		return m
	}

	type candidate struct {
		p       *Profile
		score   int
		explain string
		buses   []MatchedBus
	}
	var matched []candidate
	var near []candidate
	for _, p := range profiles {
		want := p.Hardware.Buses
		if len(want) == 0 || len(want) > maxBuses {
			continue // a profile without buses cannot be recognised by them
		}
		perm, cost := bestAssignment(followers, want)
		c := candidate{p: p}
		if cost == 0 && len(followers) == len(want) && !hasGarbled(followers) {
			for i, w := range want {
				c.buses = append(c.buses, MatchedBus{Bus: w, Device: followers[perm[i]].Device})
			}
			matched = append(matched, c)
			continue
		}
		// Closeness: IDs that differ, plus ten per missing or extra bus
		// (about one bus worth of motors).
		c.score = cost + 10*abs(len(followers)-len(want))
		c.explain = explain(p, followers, perm)
		near = append(near, c)
	}
	switch {
	case len(matched) == 1:
		m.Profile, m.Buses = matched[0].p, matched[0].buses
		return m
	case len(matched) > 1:
		var names []string
		for _, c := range matched {
			names = append(names, c.p.Name)
		}
		m.Reason = fmt.Sprintf("the servo buses match several profiles (%s): the profiles' hardware.buses must differ", strings.Join(names, ", "))
		return m
	case len(near) == 0:
		m.Reason = withNotes("no profile describes any servo buses (hardware.buses): nothing to match against", notes)
		return m
	}
	// The closest profile gets the full explanation; each other one a
	// line saying why it is not that either.
	sort.SliceStable(near, func(i, j int) bool { return near[i].score < near[j].score })
	reasons := []string{near[0].explain}
	for _, c := range near[1:] {
		if n := len(c.p.Hardware.Buses); n != len(followers) {
			reasons = append(reasons, fmt.Sprintf("not %s either: it has %d servo %s, found %d", c.p.Name, n, plural(n, "bus", "buses"), len(followers)))
		} else {
			reasons = append(reasons, "not "+c.p.Name+" either: "+c.explain)
		}
	}
	m.Reason = withNotes(strings.Join(reasons, "; "), notes)
	return m
}

// bestAssignment pairs the profile's buses with observed ones so that the
// number of IDs that differ is smallest. perm[i] is the observed bus for
// want[i], or -1 when there are fewer observed buses than wanted; cost
// counts differing IDs over the pairs made.
func bestAssignment(got []ObservedBus, want []Bus) (perm []int, cost int) {
	best, bestCost := []int(nil), -1
	cur := make([]int, len(want))
	used := make([]bool, len(got))
	var walk func(i, c int)
	walk = func(i, c int) {
		if bestCost >= 0 && c >= bestCost {
			return
		}
		if i == len(want) {
			best, bestCost = slices.Clone(cur), c
			return
		}
		for j := range got {
			if used[j] {
				continue
			}
			used[j], cur[i] = true, j
			walk(i+1, c+diffCount(got[j], want[i].IDs))
			used[j] = false
		}
		// Fewer observed buses than wanted: leave this one unpaired, but
		// only as often as there are buses missing.
		if unpaired(cur[:i]) < len(want)-len(got) {
			cur[i] = -1
			walk(i+1, c)
		}
	}
	walk(0, 0)
	return best, bestCost
}

func unpaired(perm []int) int {
	n := 0
	for _, j := range perm {
		if j < 0 {
			n++
		}
	}
	return n
}

// diffCount is how many IDs are missing or extra on a bus, garbled IDs
// counting as missing.
func diffCount(b ObservedBus, r IDRange) int {
	missing, extra := compare(b.IDs, r)
	return len(missing) + len(extra)
}

func compare(ids []int, r IDRange) (missing, extra []int) {
	for id := r.From; id <= r.To; id++ {
		if !slices.Contains(ids, id) {
			missing = append(missing, id)
		}
	}
	for _, id := range ids {
		if id < r.From || id > r.To {
			extra = append(extra, id)
		}
	}
	return missing, extra
}

// explain says what differs between the observed buses and profile p,
// given the pairing perm from bestAssignment.
func explain(p *Profile, got []ObservedBus, perm []int) string {
	want := p.Hardware.Buses
	var parts []string
	paired := make([]bool, len(got))
	for i, w := range want {
		where := busName(i, len(want), w)
		if perm[i] < 0 {
			parts = append(parts, fmt.Sprintf("%s needs a %s answering IDs %s, and no such bus answered: plug in its servo adapter and power its motors", p.Name, where, w.IDs))
			continue
		}
		paired[perm[i]] = true
		b := got[perm[i]]
		missing, extra := compare(b.IDs, w.IDs)
		if len(missing)+len(extra) == 0 {
			continue
		}
		s := fmt.Sprintf("found %s on %s, %s needs %d (IDs %s) on its %s", motors(b.IDs), b.Device, p.Name, w.IDs.Count(), w.IDs, where)
		var fix []string
		if len(missing) > 0 {
			fix = append(fix, fmt.Sprintf("no answer from %s %s (check its cable, power and ID)", plural(len(missing), "ID", "IDs"), formatIDs(missing)))
		}
		if len(extra) > 0 {
			fix = append(fix, fmt.Sprintf("%s %s should not be on this bus", plural(len(extra), "ID", "IDs"), formatIDs(extra)))
		}
		parts = append(parts, s+": "+strings.Join(fix, "; "))
	}
	if len(got) > len(want) {
		var extra []string
		for j, b := range got {
			if !paired[j] {
				extra = append(extra, fmt.Sprintf("%s (%s)", b.Device, motors(b.IDs)))
			}
		}
		head := fmt.Sprintf("found %d servo buses, %s has %d: unplug %s or check that this is a %s", len(got), p.Name, len(want), strings.Join(extra, ", "), p.Name)
		parts = append([]string{head}, parts...)
	}
	return strings.Join(parts, "; ")
}

func busName(i, n int, b Bus) string {
	if n == 1 {
		return "bus (" + b.Role + ")"
	}
	ord := []string{"first", "second", "third", "fourth", "fifth", "sixth"}
	return ord[i] + " bus (" + b.Role + ")"
}

func motors(ids []int) string {
	if len(ids) == 0 {
		return "no motors"
	}
	return fmt.Sprintf("%s (%s %s)", plural(len(ids), "1 motor", strconv.Itoa(len(ids))+" motors"), plural(len(ids), "ID", "IDs"), formatIDs(ids))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// formatIDs writes sorted IDs compactly: "1-6, 8".
func formatIDs(ids []int) string {
	var parts []string
	for i := 0; i < len(ids); {
		j := i
		for j+1 < len(ids) && ids[j+1] == ids[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", ids[i], ids[j]))
		} else {
			parts = append(parts, strconv.Itoa(ids[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, ", ")
}

func sortedSet(ids []int) []int {
	out := slices.Clone(ids)
	slices.Sort(out)
	return slices.Compact(out)
}

func equalRange(ids []int, r IDRange) bool {
	if len(ids) != r.Count() {
		return false
	}
	missing, extra := compare(ids, r)
	return len(missing)+len(extra) == 0
}

func hasGarbled(bs []ObservedBus) bool {
	for _, b := range bs {
		if len(b.Garbled) > 0 {
			return true
		}
	}
	return false
}

func withNotes(msg string, notes []string) string {
	if len(notes) == 0 {
		return msg
	}
	if msg == "" {
		return strings.Join(notes, "; ")
	}
	return msg + "; " + strings.Join(notes, "; ")
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
