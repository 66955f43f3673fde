package leader

import (
	"context"
	"errors"
	"testing"
	"time"
)

// answer is one leadership check's result, handed to the runner by the test.
type answer struct {
	leads bool
	err   error
}

// harness drives a Runner round by round: every check waits for the test's
// answer, and every job call reports its gained flag and waits for the
// test's verdict on what the job returns.
type harness struct {
	t       *testing.T
	answers chan answer
	calls   chan bool  // gained, one per job call
	results chan error // what the job returns
	checks  chan error // CheckFailed's arguments
	fails   chan error // JobFailed's arguments
	done    chan error // Run's return
	cancel  context.CancelFunc
}

func start(t *testing.T, r Runner) *harness {
	t.Helper()
	h := &harness{t: t, answers: make(chan answer), calls: make(chan bool), results: make(chan error),
		checks: make(chan error, 10), fails: make(chan error, 10), done: make(chan error, 1)}
	r.Interval = time.Millisecond
	r.CheckFailed = func(err error) { h.checks <- err }
	r.JobFailed = func(err error) { h.fails <- err }
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	isLeader := func(ctx context.Context) (bool, error) {
		select {
		case a := <-h.answers:
			return a.leads, a.err
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	job := func(ctx context.Context, gained bool) error {
		h.calls <- gained
		select {
		case err := <-h.results:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	go func() { h.done <- r.Run(ctx, isLeader, job) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context was cancelled")
		}
	})
	return h
}

// round answers one check and, when the node leads, expects a job call
// with the given gained flag and lets it return jobErr.
func (h *harness) round(leads bool, wantGained bool, jobErr error) {
	h.t.Helper()
	h.answers <- answer{leads: leads}
	if !leads {
		return
	}
	select {
	case gained := <-h.calls:
		if gained != wantGained {
			h.t.Fatalf("job called with gained=%v, want %v", gained, wantGained)
		}
	case <-time.After(10 * time.Second):
		h.t.Fatal("job not called on a round this node leads")
	}
	h.results <- jobErr
}

// noJob asserts that the job is not called before the next check.
func (h *harness) noJob() {
	h.t.Helper()
	select {
	case <-h.calls:
		h.t.Fatal("job called on a round this node does not lead")
	case h.answers <- answer{leads: false}: // the next round's check came first
	}
}

func TestRunsOnlyWhileLeadingAndSaysWhenLeadershipWasGained(t *testing.T) {
	h := start(t, Runner{})
	h.round(false, false, nil)
	h.noJob()
	h.round(true, true, nil)   // gained
	h.round(true, false, nil)  // still leading
	h.round(true, false, nil)  // still leading
	h.round(false, false, nil) // lost
	h.noJob()
	h.round(true, true, nil) // regained: the job must re-derive its state
	h.round(true, false, nil)
}

func TestFailedCheckCountsAsNotLeading(t *testing.T) {
	h := start(t, Runner{})
	h.round(true, true, nil)
	boom := errors.New("no quorum")
	h.answers <- answer{err: boom}
	if err := <-h.checks; !errors.Is(err, boom) {
		t.Fatalf("CheckFailed got %v, want %v", err, boom)
	}
	h.noJob()
	h.round(true, true, nil) // leading again after a failed check is a gain
}

func TestJobErrorIsReportedAndTheNextRoundRuns(t *testing.T) {
	h := start(t, Runner{})
	boom := errors.New("step failed")
	h.round(true, true, boom)
	if err := <-h.fails; !errors.Is(err, boom) {
		t.Fatalf("JobFailed got %v, want %v", err, boom)
	}
	h.round(true, false, nil) // a failed job does not end the term
	select {
	case err := <-h.fails:
		t.Fatalf("JobFailed called for a job that succeeded: %v", err)
	default:
	}
}

// Cancelling Run's context cancels the running job's and Run returns once
// the job has.
func TestCancelStopsTheRunningJobAndRun(t *testing.T) {
	h := start(t, Runner{})
	h.answers <- answer{leads: true}
	<-h.calls // the job is now waiting for a result or its context
	h.cancel()
	select {
	case err := <-h.done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v, want context.Canceled", err)
		}
		h.done <- err // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if err := <-h.fails; !errors.Is(err, context.Canceled) {
		t.Fatalf("the cancelled job's error: %v, want context.Canceled", err)
	}
}

// A job is not interrupted when leadership is lost: the loss shows at the
// next check, which waits for the job.
func TestJobIsNotInterruptedByTheNextCheck(t *testing.T) {
	h := start(t, Runner{})
	h.answers <- answer{leads: true}
	<-h.calls
	select {
	case h.answers <- answer{leads: false}:
		t.Fatal("the next check ran while the job was running")
	case <-time.After(20 * time.Millisecond):
	}
	h.results <- nil
	h.round(false, false, nil)
}

func TestTimeouts(t *testing.T) {
	t.Run("CheckTimeout bounds the check only", func(t *testing.T) {
		checkDeadline := make(chan time.Duration, 1)
		jobDeadline := make(chan bool, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r := Runner{Interval: time.Millisecond, CheckTimeout: time.Minute}
		go r.Run(ctx, func(ctx context.Context) (bool, error) {
			d, _ := ctx.Deadline()
			select {
			case checkDeadline <- time.Until(d):
			default: // a round after cancel
			}
			return true, nil
		}, func(ctx context.Context, _ bool) error {
			_, ok := ctx.Deadline()
			select {
			case jobDeadline <- ok:
			default:
			}
			cancel()
			return nil
		})
		if d := <-checkDeadline; d <= 0 || d > time.Minute {
			t.Fatalf("check's time left %v, want within CheckTimeout", d)
		}
		if <-jobDeadline {
			t.Fatal("the job has a deadline; only the check should")
		}
	})
	t.Run("RoundTimeout bounds check and job", func(t *testing.T) {
		deadlines := make(chan time.Time, 2)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r := Runner{Interval: time.Millisecond, RoundTimeout: time.Minute}
		go r.Run(ctx, func(ctx context.Context) (bool, error) {
			d, _ := ctx.Deadline()
			select {
			case deadlines <- d:
			default: // a round after cancel
			}
			return true, nil
		}, func(ctx context.Context, _ bool) error {
			d, _ := ctx.Deadline()
			select {
			case deadlines <- d:
			default:
			}
			cancel()
			return nil
		})
		check, job := <-deadlines, <-deadlines
		if check.IsZero() || !check.Equal(job) {
			t.Fatalf("check deadline %v, job deadline %v: want one round deadline for both", check, job)
		}
	})
}

func TestNilIsLeaderAlwaysLeads(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gained := make(chan bool, 3)
	done := make(chan error, 1)
	go func() {
		done <- Runner{Interval: time.Millisecond}.Run(ctx, nil, func(_ context.Context, g bool) error {
			select {
			case gained <- g:
			default: // a round after cancel
			}
			if len(gained) == cap(gained) {
				cancel()
			}
			return nil
		})
	}()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	if a, b, c := <-gained, <-gained, <-gained; !a || b || c {
		t.Fatalf("gained flags %v %v %v, want true false false", a, b, c)
	}
}
