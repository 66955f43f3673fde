package station

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lekiwi/heartbeat/netboot/outbox"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/raspberrypi"
)

// Paths of the technician's view.
const (
	StatusPath  = "/status"
	MetricsPath = "/metrics"
)

// maxReportBytes bounds a hardware report (a real one is a few KiB).
const maxReportBytes = 1 << 20

// Handler is the station's HTTP API: the board routes (protocol.Station*),
// the image, /status and /metrics.
func (s *Station) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+protocol.StationReportPath, s.handleReport)
	mux.HandleFunc("GET "+protocol.StationPlanPath, s.handlePlan)
	mux.HandleFunc("POST "+protocol.StationProgressPath, s.handleProgress)
	mux.HandleFunc("GET "+protocol.StationImagePath, func(w http.ResponseWriter, r *http.Request) { s.serveFile(w, r, s.requestedImage(r).path) })
	mux.HandleFunc("GET "+protocol.StationImagePath+".bmap", func(w http.ResponseWriter, r *http.Request) { s.serveFile(w, r, s.requestedImage(r).path+".bmap") })
	mux.HandleFunc("GET "+StatusPath, s.handleStatus)
	if s.cfg.Gatherer != nil {
		mux.Handle("GET "+MetricsPath, promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, protocol.StationErrorBody{Error: fmt.Sprintf(format, args...)})
}

// authBoard returns the serial whose board token the request carries.
func (s *Station) authBoard(w http.ResponseWriter, r *http.Request) (string, bool) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if ok {
		s.mu.Lock()
		serial, known := s.tokens[strings.TrimSpace(token)]
		s.mu.Unlock()
		if known {
			return serial, true
		}
	}
	s.metrics.unauthorized.Inc()
	w.Header().Set("WWW-Authenticate", `Bearer realm="lekiwi-netboot"`)
	writeError(w, http.StatusUnauthorized, "unknown board token: send the %s from this boot's kernel command line as \"Authorization: Bearer <token>\"; a board that rebooted must use its new one", protocol.KernelArgToken)
	return "", false
}

func (s *Station) handleReport(w http.ResponseWriter, r *http.Request) {
	serial, ok := s.authBoard(w, r)
	if !ok {
		return
	}
	var rep protocol.HardwareReport
	dec := json.NewDecoder(io.LimitReader(r.Body, maxReportBytes))
	if err := dec.Decode(&rep); err != nil {
		writeError(w, http.StatusBadRequest, "hardware report for %s is not valid JSON: %v", serial, err)
		return
	}
	if err := rep.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, "hardware report for %s: %v", serial, err)
		return
	}
	if rep.Board.Serial != "" {
		got, err := raspberrypi.ParseSerial(rep.Board.Serial)
		if err != nil || got.String() != serial {
			writeError(w, http.StatusBadRequest, "the report is for board serial %q but the token belongs to board %s", rep.Board.Serial, serial)
			return
		}
	}
	buses := make([]profiles.ObservedBus, len(rep.ServoBuses))
	for i, b := range rep.ServoBuses {
		buses[i] = profiles.ObservedBus{Device: b.Device, IDs: b.IDs, Garbled: b.Garbled, Error: b.Error}
	}
	match, err := profiles.MatchEmbedded(buses)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "matching profiles: %v", err)
		return
	}

	needIdentity := s.recordReport(serial, &rep, match)
	if needIdentity {
		// Not the request's context: a board that hangs up must not leave
		// its identity half-asked.
		s.acquireIdentity(context.WithoutCancel(r.Context()), serial)
	}
	s.writePlan(w, serial)
}

// recordReport applies a report: probe, match, and the identity step. It
// reports whether control must be asked for an identity.
func (s *Station) recordReport(serial string, rep *protocol.HardwareReport, match profiles.Match) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.boards[serial]
	b.Report = rep
	b.LastSeen = s.now().UTC()
	if rep.Board.Revision != "" && b.Revision == "" {
		b.Revision = rep.Board.Revision
		b.Model = decodeModel(rep.Board.Revision, rep.Board.Model)
	}
	b.Installed = false
	storage, why := chooseStorage(rep.Storage)
	if storage == "" {
		s.metrics.reports.WithLabelValues("held").Inc()
		s.setStepLocked(b, StepProbe, StatusHeld, why)
		return false
	}
	b.Storage = storage
	s.setStepLocked(b, StepProbe, StatusDone, summarize(rep, storage))
	if match.Held() {
		s.metrics.reports.WithLabelValues("held").Inc()
		b.Profile = ""
		s.setStepLocked(b, StepMatch, StatusHeld, match.Reason)
		return false
	}
	s.metrics.reports.WithLabelValues("matched").Inc()
	profile := match.Profile.Name
	if b.Profile != profile {
		b.Identity = nil // an identity is for one profile
	}
	b.Profile = profile
	s.setStepLocked(b, StepMatch, StatusDone, "profile "+profile)
	if b.Identity != nil {
		// A retried run keeps the identity control gave it (its
		// enrollment token is still unused).
		s.setStepLocked(b, StepIdentity, StatusDone, "robot "+b.Identity.RobotID)
		return false
	}
	b.ControlUnreachableSince, b.LastControlError = time.Time{}, ""
	s.setStepLocked(b, StepIdentity, StatusStarted, "asking control for the robot identity")
	return true
}

// chooseStorage picks the disk to install onto: NVMe over eMMC over SD.
func chooseStorage(devs []protocol.StorageDevice) (name, why string) {
	rank := map[string]int{protocol.StorageNVMe: 3, protocol.StorageEMMC: 2, protocol.StorageSD: 1}
	best, bestRank := "", 0
	for _, d := range devs {
		if r := rank[d.Kind]; r > bestRank && d.SizeBytes > 0 {
			best, bestRank = d.Name, r
		}
	}
	if best == "" {
		var seen []string
		for _, d := range devs {
			seen = append(seen, fmt.Sprintf("%s (%s, %d bytes)", d.Name, cmp.Or(d.Kind, "unknown kind"), d.SizeBytes))
		}
		found := "none"
		if len(seen) > 0 {
			found = strings.Join(seen, ", ")
		}
		return "", "no NVMe drive, eMMC or SD card to install onto (found: " + found + "): fit one and reboot the board"
	}
	return best, ""
}

func summarize(rep *protocol.HardwareReport, storage string) string {
	model := cmp.Or(rep.Board.Model, "unknown board")
	return fmt.Sprintf("%s, %d servo bus(es), installing onto %s", model, len(rep.ServoBuses), storage)
}

func (s *Station) handlePlan(w http.ResponseWriter, r *http.Request) {
	serial, ok := s.authBoard(w, r)
	if !ok {
		return
	}
	s.writePlan(w, serial)
}

func (s *Station) writePlan(w http.ResponseWriter, serial string) {
	s.mu.Lock()
	plan := s.planLocked(s.boards[serial])
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, plan)
}

// planLocked is what the board should do next.
func (s *Station) planLocked(b *Board) protocol.StationPlan {
	retry := int(max(1, s.cfg.PlanRetryAfter.Round(time.Second)/time.Second))
	switch {
	case b.Installed:
		return protocol.StationPlan{Action: protocol.PlanDone, Profile: b.Profile, RobotID: b.RobotID, Reason: "installed: reboot into the robot's own system"}
	case b.Status == StatusHeld:
		return protocol.StationPlan{Action: protocol.PlanHold, Profile: b.Profile, Reason: b.Reason}
	case b.Identity != nil:
		return protocol.StationPlan{Action: protocol.PlanInstall, Profile: b.Profile,
			RobotID: b.Identity.RobotID, Hostname: b.Hostname, EnrollToken: b.Identity.EnrollToken, CAPEM: b.Identity.CAPEM,
			ImageSize: s.imageFor(b.Profile).size, ImageVersion: s.imageFor(b.Profile).version, Storage: b.Storage}
	case b.Report == nil:
		return protocol.StationPlan{Action: protocol.PlanWait, RetryAfterSeconds: retry, Reason: "no hardware report yet: POST " + protocol.StationReportPath + " first"}
	default:
		return protocol.StationPlan{Action: protocol.PlanWait, RetryAfterSeconds: retry, Profile: b.Profile, Reason: cmp.Or(b.Reason, "waiting for the robot identity")}
	}
}

// Steps and statuses a board may report.
var (
	progressSteps    = []string{StepProbe, StepMatch, StepInstall, StepVerify, StepIdentity, StepReboot}
	progressStatuses = []string{StatusStarted, StatusDone, StatusFailed, StatusWaiting, StatusHeld}
)

func (s *Station) handleProgress(w http.ResponseWriter, r *http.Request) {
	serial, ok := s.authBoard(w, r)
	if !ok {
		return
	}
	var p protocol.StationProgress
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&p); err != nil {
		writeError(w, http.StatusBadRequest, "progress for %s is not valid JSON: %v", serial, err)
		return
	}
	if !slices.Contains(progressSteps, p.Step) || !slices.Contains(progressStatuses, p.Status) {
		writeError(w, http.StatusBadRequest, "progress step %q status %q: want a step of %v and a status of %v", p.Step, p.Status, progressSteps, progressStatuses)
		return
	}
	if len(p.Detail) > 1024 {
		p.Detail = p.Detail[:1024]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.boards[serial]
	b.LastSeen = s.now().UTC()
	b.Done, b.Total = p.Done, p.Total
	switch {
	case b.Installed && p.Status != StatusFailed:
		// After identity done the board is at "online"; later reports
		// (reboot) are forwarded but do not move it back.
		s.addEvent(protocol.EventFactoryStep, b.RobotID, protocol.FactoryStep{Serial: serial, Step: p.Step, Status: p.Status, Profile: b.Profile, Detail: p.Detail})
		s.saveLocked(b)
	case p.Step == StepMatch || p.Status == StatusWaiting || p.Status == StatusHeld:
		// The board echoes decisions the station made (held at match,
		// waiting for the identity): forwarded, the station's own state
		// stays as it is.
		s.addEvent(protocol.EventFactoryStep, b.RobotID, protocol.FactoryStep{Serial: serial, Step: p.Step, Status: p.Status, Profile: b.Profile, Detail: p.Detail})
		s.saveLocked(b)
	case p.Step == StepProbe && p.Status != StatusFailed && b.Report != nil && b.Step != StepBoot && b.Step != StepProbe:
		// The board reports its probe done after the report's answer, when
		// the station has already acted on the report (held the board, or
		// asked control): forwarded, but the board stays where the station
		// put it — else a held board would lose its hold, and one waiting
		// for control would drop out of the identity loop.
		s.addEvent(protocol.EventFactoryStep, b.RobotID, protocol.FactoryStep{Serial: serial, Step: p.Step, Status: p.Status, Profile: b.Profile, Detail: p.Detail})
		s.saveLocked(b)
	case p.Step == StepIdentity && p.Status == StatusDone:
		// The board wrote its identity after the image verified: the run
		// is over (see the package notes).
		s.setStepLocked(b, StepIdentity, StatusDone, "written on "+b.Storage+": "+p.Detail)
		b.Installed = true
		b.Identity = nil // the enrollment token is on the robot's disk now; forget it
		s.setStepLocked(b, StepOnline, StatusWaiting, "installed on "+b.Storage+": waiting for robot "+b.RobotID+" to come online")
	default:
		s.setStepLocked(b, p.Step, p.Status, p.Detail)
	}
	w.WriteHeader(http.StatusNoContent)
}

// requestedImage is the image of the profile of the board whose token the
// request carries (the factory run sends it on every call), else Image.
func (s *Station) requestedImage(r *http.Request) robotImage {
	profile := ""
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		s.mu.Lock()
		if serial, known := s.tokens[strings.TrimSpace(token)]; known {
			profile = s.boards[serial].Profile
		}
		s.mu.Unlock()
	}
	return s.imageFor(profile)
}

// serveFile serves the image or its block map with Range support. The
// image is not secret (it holds no identity), so it needs no token.
func (s *Station) serveFile(w http.ResponseWriter, r *http.Request, path string) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			writeError(w, http.StatusNotFound, "%s is not on this station", r.URL.Path)
			return
		}
		writeError(w, http.StatusInternalServerError, "opening %s: %v", r.URL.Path, err)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "opening %s: %v", r.URL.Path, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// BoardStatus is one board as the technician sees it.
type BoardStatus struct {
	Serial    string    `json:"serial"`
	MAC       string    `json:"mac,omitempty"`
	Model     string    `json:"model,omitempty"`
	Step      string    `json:"step"`
	Status    string    `json:"status"`
	Reason    string    `json:"reason,omitempty"`
	Profile   string    `json:"profile,omitempty"`
	RobotID   string    `json:"robot_id,omitempty"`
	Storage   string    `json:"storage,omitempty"`
	Done      int64     `json:"done,omitempty"`
	Total     int64     `json:"total,omitempty"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	UpdatedAt time.Time `json:"updated_at"`
}

// StatusReport is the body of GET /status.
type StatusReport struct {
	StationURL string        `json:"station_url"`
	Boards     []BoardStatus `json:"boards"`
	// Events is the link to control: events queued and its last error.
	Events outbox.Status `json:"events"`
}

// Status is what GET /status returns: every board, most recently seen
// first.
func (s *Station) Status() StatusReport {
	s.mu.Lock()
	out := StatusReport{StationURL: s.cfg.StationURL, Boards: make([]BoardStatus, 0, len(s.boards))}
	for _, b := range s.boards {
		reason := b.Reason
		if b.LastControlError != "" && b.Status == StatusWaiting {
			reason += ": " + b.LastControlError
		}
		out.Boards = append(out.Boards, BoardStatus{Serial: b.Serial, MAC: b.MAC, Model: b.Model, Step: b.Step, Status: b.Status,
			Reason: reason, Profile: b.Profile, RobotID: b.RobotID, Storage: b.Storage, Done: b.Done, Total: b.Total,
			FirstSeen: b.FirstSeen, LastSeen: b.LastSeen, UpdatedAt: b.UpdatedAt})
	}
	s.mu.Unlock()
	slices.SortFunc(out.Boards, func(a, b BoardStatus) int {
		return cmp.Or(b.LastSeen.Compare(a.LastSeen), strings.Compare(a.Serial, b.Serial))
	})
	out.Events = s.outbox.Status()
	return out
}

func (s *Station) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Status())
}
