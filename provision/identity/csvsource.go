package identity

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/lekiwi/heartbeat/image/customize"
	"github.com/lekiwi/heartbeat/profiles"
)

// JournalSuffix names a batch file's journal: <batch>.used.
const JournalSuffix = ".used"

// ErrExhausted says a source has no identity left to hand out.
var ErrExhausted = errors.New("no unused identity left")

// CSVOptions tune a batch source.
type CSVOptions struct {
	// CAPEM is the fleet CA written for rows without a ca column; nil
	// writes none (the image's own CA file then applies).
	CAPEM []byte
	// Profile gives host names to rows without one (see Hostname).
	Profile *profiles.Profile
	// ReissueFailed hands out again the rows an earlier run journaled as
	// failed or never finished. Only for cards known to be wiped: a
	// failed card may already hold the row's key or token.
	ReissueFailed bool
	// JournalPath defaults to the batch file's path + JournalSuffix.
	JournalPath string
	// Now defaults to time.Now (certificate expiry, journal times).
	Now func() time.Time
}

// CSV hands out the rows of a batch file, each once across all runs.
type CSV struct {
	mu         sync.Mutex
	path       string
	queue      []customize.Robot // identities still to hand out, file order
	issued     map[string]string // robot id → target, this run
	unfinished []Record
	journal    *Journal
}

var _ Source = (*CSV)(nil)

// OpenCSV reads the batch file at path and its journal, and loads the
// certificate, key and CA files of every row still to hand out, so a
// missing or mismatched file stops the bench before any card is written.
func OpenCSV(path string, o CSVOptions) (*CSV, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.JournalPath == "" {
		o.JournalPath = path + JournalSuffix
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("identity batch: %w", err)
	}
	rows, err := ParseBatch(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("identity batch %s: %w", path, err)
	}
	j, recs, err := OpenJournal(o.JournalPath, o.Now)
	if err != nil {
		return nil, err
	}
	c := &CSV{path: path, issued: map[string]string{}, journal: j}
	last := LastEvents(recs)
	inBatch := map[string]bool{}
	for _, r := range rows {
		inBatch[r.RobotID] = true
	}
	for _, rec := range lastRecords(recs) {
		if rec.Event != EventOK && inBatch[rec.RobotID] {
			c.unfinished = append(c.unfinished, rec)
		}
	}
	dir := filepath.Dir(path)
	for _, r := range rows {
		switch ev, seen := last[r.RobotID]; {
		case !seen:
		case ev != EventOK && o.ReissueFailed:
		default:
			continue
		}
		robot, err := loadRow(dir, r, o)
		if err != nil {
			j.Close()
			return nil, fmt.Errorf("identity batch %s: line %d: %w", path, r.Line, err)
		}
		c.queue = append(c.queue, robot)
	}
	return c, nil
}

// lastRecords keeps each robot's latest record, in journal order.
func lastRecords(recs []Record) []Record {
	idx := map[string]int{}
	var out []Record
	for _, r := range recs {
		if i, ok := idx[r.RobotID]; ok {
			out[i] = r
			continue
		}
		idx[r.RobotID] = len(out)
		out = append(out, r)
	}
	return out
}

func loadRow(dir string, r Row, o CSVOptions) (customize.Robot, error) {
	robot := customize.Robot{RobotID: r.RobotID, Hostname: r.Hostname, EnrollToken: r.EnrollToken, CAPEM: o.CAPEM}
	if robot.Hostname == "" {
		robot.Hostname = Hostname(o.Profile, r.RobotID)
	}
	read := func(name, p string) ([]byte, error) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("robot %s: %s file: %w", r.RobotID, name, err)
		}
		return b, nil
	}
	var err error
	if r.CA != "" {
		if robot.CAPEM, err = read(ColCA, r.CA); err != nil {
			return robot, err
		}
	}
	if r.Cert != "" {
		if robot.CertPEM, err = read(ColCert, r.Cert); err != nil {
			return robot, err
		}
		if robot.KeyPEM, err = read(ColKey, r.Key); err != nil {
			return robot, err
		}
		if err := checkRobotCert(robot.CertPEM, robot.KeyPEM, r.RobotID, o.Now()); err != nil {
			return robot, fmt.Errorf("robot %s: %s, %s: %w", r.RobotID, r.Cert, r.Key, err)
		}
	}
	return robot, nil
}

// Remaining is how many identities are left to hand out.
func (c *CSV) Remaining() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// Unfinished lists, as of opening, the batch's identities an earlier run
// handed out whose card failed or never finished: for the technician to
// check (and, once those cards are wiped, reissue with ReissueFailed).
func (c *CSV) Unfinished() []Record { return append([]Record(nil), c.unfinished...) }

// JournalPath is where the batch's journal is.
func (c *CSV) JournalPath() string { return c.journal.Path() }

// Next hands the next unused row to target.
func (c *CSV) Next(ctx context.Context, target string) (customize.Robot, error) {
	if err := ctx.Err(); err != nil {
		return customize.Robot{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		return customize.Robot{}, fmt.Errorf("identity batch %s for %s: %w (add rows, or see %s)", c.path, target, ErrExhausted, c.journal.Path())
	}
	r := c.queue[0]
	// Gone from the queue whatever the journal says: a row whose
	// journaling failed may still be half-recorded.
	c.queue = c.queue[1:]
	if err := c.journal.Append(EventIssued, r.RobotID, target, ""); err != nil {
		return customize.Robot{}, fmt.Errorf("identity for %s: %w", target, err)
	}
	c.issued[r.RobotID] = target
	return r, nil
}

// Finish journals the outcome of the card that got robotID.
func (c *CSV) Finish(robotID, target string, failure error) error {
	return finish(&c.mu, c.issued, c.journal, robotID, target, failure)
}

// Close closes the journal.
func (c *CSV) Close() error { return c.journal.Close() }

// finish is Finish for both sources: only identities issued by this run
// can be finished, once. j may be nil (no journal).
func finish(mu *sync.Mutex, issued map[string]string, j *Journal, robotID, target string, failure error) error {
	mu.Lock()
	got, ok := issued[robotID]
	if ok {
		delete(issued, robotID)
	}
	mu.Unlock()
	if !ok {
		return fmt.Errorf("identity %s was not handed out in this run (or is already finished)", robotID)
	}
	if got != target {
		return fmt.Errorf("identity %s went to %s, not %s", robotID, got, target)
	}
	switch {
	case j == nil:
		return nil
	case failure != nil:
		return j.Append(EventFailed, robotID, target, failure.Error())
	default:
		return j.Append(EventOK, robotID, target, "")
	}
}
