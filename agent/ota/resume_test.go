package ota_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/image/release"
	"github.com/lekiwi/heartbeat/image/release/cdc"
)

// flakySource serves a release directory, counts the bytes it sends, and
// drops the link once cutAt bytes have gone out (once).
type flakySource struct {
	ota.DirSource
	mu    sync.Mutex
	sent  int64
	cutAt int64 // 0: never
	cut   bool
	onCut func()
}

func (s *flakySource) Blobs(ctx context.Context, ref string) (release.BlobSource, error) {
	b, err := s.DirSource.Blobs(ctx, ref)
	return flakyBlobs{b, s}, err
}

type flakyBlobs struct {
	release.BlobSource
	s *flakySource
}

func (b flakyBlobs) OpenRange(ctx context.Context, digest string, off, length int64) (io.ReadCloser, error) {
	rc, err := b.BlobSource.OpenRange(ctx, digest, off, length)
	if err != nil {
		return nil, err
	}
	return &flakyReader{rc, b.s}, nil
}

type flakyReader struct {
	io.ReadCloser
	s *flakySource
}

var errLinkDown = errors.New("connection reset by peer")

func (r *flakyReader) Read(p []byte) (int, error) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.s.cutAt > 0 && !r.s.cut {
		if left := r.s.cutAt - r.s.sent; left <= 0 {
			r.s.cut = true
			if r.s.onCut != nil {
				r.s.onCut()
			}
			return 0, errLinkDown
		} else if int64(len(p)) > left {
			p = p[:left]
		}
	}
	n, err := r.ReadCloser.Read(p)
	r.s.sent += int64(n)
	return n, err
}

func (s *flakySource) bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent
}

// deltaBytes is what an uncut install downloads.
func deltaBytes(t *testing.T, f *fixture) int64 {
	src := &flakySource{}
	dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
	r, err := newRobot(dev, f.plan, t.TempDir())
	must(t, "robot", err)
	must(t, "power on", r.boot(bootctl.A, false))
	must(t, "install", r.agent(t, src, nil, f.key).Install(context.Background(), f.args()))
	return src.bytes()
}

// TestResume: a download cut at 50% resumes and downloads
// only what is missing — within one try (the link comes back) and across
// a restart of the agent (the cache survives, the state says to resume).
func TestResume(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()
	full := deltaBytes(t, f)
	// The chunk in flight at the cut is fetched again: at most one frame.
	slack := int64(cdc.Max + 1024)

	t.Run("link drops and comes back", func(t *testing.T) {
		src := &flakySource{cutAt: full / 2}
		dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
		r, err := newRobot(dev, f.plan, t.TempDir())
		must(t, "robot", err)
		must(t, "power on", r.boot(bootctl.A, false))
		must(t, "install", r.agent(t, src, nil, f.key).Install(ctx, f.args()))
		got := src.bytes()
		if !src.cut || got < full || got > full+slack {
			t.Fatalf("downloaded %d bytes with a cut at %d; an uncut install downloads %d", got, full/2, full)
		}
		must(t, "trial", r.boot(bootctl.B, true))
		checkSlotMatchesRelease(t, f, dev.Current(), bootctl.B)
		fmt.Printf("resume after a dropped link: %d bytes in all with a cut at %d (uncut: %d; refetched %d)\n", got, full/2, full, got-full)
	})

	t.Run("power cut during the download", func(t *testing.T) {
		dev := powercut.NewDevice(f.disk1(t), powercut.Fault{})
		// The power fails the moment the link has carried half.
		src := &flakySource{cutAt: full / 2, onCut: func() { dev.PowerOff() }}
		dir := t.TempDir()
		r, err := newRobot(dev, f.plan, dir)
		must(t, "robot", err)
		must(t, "power on", r.boot(bootctl.A, false))
		r.tweak = func(o *ota.Options) { o.DownloadAttempts = 1 } // the process dies with the power
		err = r.agent(t, src, nil, f.key).Install(ctx, f.args())
		if !errors.Is(err, errLinkDown) {
			t.Fatalf("first try: %v", err)
		}
		first := src.bytes()
		if len(dev.Writes()) != 0 {
			t.Fatal("the slot was written before the download finished")
		}
		// Power on again: the agent's start finds the install to resume.
		dev = powercut.NewDevice(dev.PowerOff(), powercut.Fault{})
		r, err = newRobot(dev, f.plan, dir)
		must(t, "robot", err)
		must(t, "power on", r.boot(bootctl.A, false))
		src2 := &flakySource{}
		u := r.agent(t, src2, nil, f.key)
		out, err := u.OnStart(ctx)
		must(t, "on start", err)
		if out.Resume == nil || out.Resume.Release != f.args().Release || out.State != "" {
			t.Fatalf("start after the cut: %+v", out)
		}
		must(t, "resume", u.Install(ctx, *out.Resume))
		second := src2.bytes()
		if second > full-first+slack || first+second < full {
			t.Fatalf("first try %d bytes, resumed %d, uncut %d: the resume fetched more than was missing", first, second, full)
		}
		must(t, "trial", r.boot(bootctl.B, true))
		checkSlotMatchesRelease(t, f, dev.Current(), bootctl.B)
		fmt.Printf("resume after a power cut: first try %d bytes (cut at %d), resumed with %d bytes, uncut %d\n", first, full/2, second, full)
	})
}
