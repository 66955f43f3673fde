package agent

import (
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/agent/identity"
	"github.com/lekiwi/heartbeat/agent/internal/pkitest"
	"github.com/lekiwi/heartbeat/protocol"
)

// clock is Options.Now with a hand the test moves forward.
type clock struct{ offset atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// mtlsHarness is an agent with a saved 90-day identity connected over mTLS
// to a pkitest control whose renewed certificates last a year.
type mtlsHarness struct {
	*harness
	id    *identity.Identity
	ctl   *pkitest.Control
	clock *clock
}

func newMTLSHarness(t *testing.T, opts pkitest.Options) *mtlsHarness {
	t.Helper()
	ca := pkitest.NewCA(t, "fleet CA")
	opts.RequireClientCert = true
	opts.Lifetime = 365 * 24 * time.Hour
	ctl := pkitest.NewControl(t, ca, opts)
	keyPEM, certPEM := ca.Issue(t, "lekiwi-7", time.Now().Add(-time.Minute), 90*24*time.Hour)
	id, err := identity.FromPEM(keyPEM, certPEM, ca.PEM)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := id.Save(filepath.Join(dir, identity.DirName)); err != nil {
		t.Fatal(err)
	}
	clk := &clock{}
	h := newHarness(t, dir, []string{"wss" + strings.TrimPrefix(ctl.URL, "https")}, func(o *Options) {
		o.HTTPClient = id.HTTPClient()
		o.Identity = id
		o.Now = clk.now
		o.RenewRetry = time.Hour
	})
	return &mtlsHarness{harness: h, id: id, ctl: ctl, clock: clk}
}

func (m *mtlsHarness) renews() []protocol.Envelope {
	var out []protocol.Envelope
	for _, f := range m.ctl.Frames() {
		if f.Type == protocol.TypeRenew {
			out = append(out, f)
		}
	}
	return out
}

func (m *mtlsHarness) waitConns(t *testing.T, n int) []pkitest.Conn {
	t.Helper()
	waitFor(t, 5*time.Second, "connections", func() bool { return len(m.ctl.Conns()) >= n })
	return m.ctl.Conns()
}

// TestRenewOverLiveConnection: with the clock moved to day 61 of a 90-day
// certificate, the agent sends one renew on its live connection; control's
// answer is installed, or — when control refuses — asked for again after
// RenewRetry or on the next connection. The connection after the renewal
// presents the new certificate.
func TestRenewOverLiveConnection(t *testing.T) {
	tests := []struct {
		name  string
		fail  int
		retry func(m *mtlsHarness)
	}{
		{name: "answered at once"},
		{name: "refused, asked again after RenewRetry", fail: 1, retry: func(m *mtlsHarness) { m.clock.advance(time.Hour) }},
		{name: "refused, asked again on the next connection", fail: 1, retry: func(m *mtlsHarness) { m.ctl.DropConnections() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMTLSHarness(t, pkitest.Options{})
			m.ctl.FailRenewals(tt.fail)
			m.start()
			m.rec.waitState(t, Connected, 5*time.Second)
			oldSerial := m.id.Certificate().SerialNumber
			if c := m.waitConns(t, 1)[0]; c.Serial.Cmp(oldSerial) != 0 || c.RobotID != "lekiwi-7" {
				t.Fatalf("control saw %+v, want the enrolled certificate", c)
			}
			time.Sleep(50 * time.Millisecond) // several sample ticks: not due yet
			if n := len(m.renews()); n != 0 {
				t.Fatalf("%d renews on day 0", n)
			}

			m.clock.advance(61 * 24 * time.Hour)
			if tt.fail > 0 {
				waitFor(t, 5*time.Second, "the first renew", func() bool { return len(m.renews()) == 1 })
				time.Sleep(50 * time.Millisecond) // several sample ticks: refused, not asked again yet
				if n := len(m.renews()); n != 1 || m.a.Stats().Renewed != 0 {
					t.Fatalf("%d renews after a refusal before the retry, want 1", n)
				}
				tt.retry(m)
			}
			waitFor(t, 5*time.Second, "an installed renewal", func() bool { return m.a.Stats().Renewed == 1 })
			renewals := m.ctl.Renewals()
			if len(renewals) != 1 || len(m.renews()) != tt.fail+1 {
				t.Fatalf("%d certificates issued for %d renews, want 1 for %d", len(renewals), len(m.renews()), tt.fail+1)
			}
			block, _ := pem.Decode(renewals[0].Cert)
			issued, _ := x509.ParseCertificate(block.Bytes)
			if m.id.Certificate().SerialNumber.Cmp(issued.SerialNumber) != 0 {
				t.Fatal("the identity does not hold the certificate control issued")
			}

			// The renew took a fresh sequence, above the hello's.
			conns := m.ctl.Conns()
			for _, r := range m.renews() {
				if r.RobotID != "lekiwi-7" || r.Sequence == 0 {
					t.Fatalf("renew envelope %+v", r)
				}
			}

			// The next connection presents the new certificate.
			before := len(conns)
			m.ctl.DropConnections()
			conns = m.waitConns(t, before+1)
			last := conns[len(conns)-1]
			if last.Serial.Cmp(issued.SerialNumber) != 0 || last.Resumed {
				t.Fatalf("after renewal control saw serial %x (resumed %v), want the new %x in a full handshake", last.Serial, last.Resumed, issued.SerialNumber)
			}
			if last.Serial.Cmp(oldSerial) == 0 {
				t.Fatal("the old certificate is still presented")
			}
			m.rec.waitState(t, Connected, 5*time.Second)
			time.Sleep(50 * time.Millisecond)
			if n := len(m.ctl.Renewals()); n != 1 {
				t.Fatalf("%d renewals: a renewed certificate asked again", n)
			}
			m.stop(t)
			if v := m.ctl.Violations(); len(v) > 0 {
				t.Fatalf("violations: %v", v)
			}
			// A restart loads the renewed identity.
			loaded, err := identity.Load(m.id.Dir())
			if err != nil || loaded.Certificate().SerialNumber.Cmp(issued.SerialNumber) != 0 {
				t.Fatalf("Load after renewal: %v", err)
			}
		})
	}
}

// TestRenewNeedsControlCapability: the agent announces CapRenew but sends
// no renew to a control that did not announce it.
func TestRenewNeedsControlCapability(t *testing.T) {
	m := newMTLSHarness(t, pkitest.Options{NoRenewCap: true})
	m.start()
	m.rec.waitState(t, Connected, 5*time.Second)
	m.clock.advance(80 * 24 * time.Hour)
	time.Sleep(100 * time.Millisecond)
	if n := len(m.renews()); n != 0 {
		t.Fatalf("%d renews to a control without %s", n, protocol.CapRenew)
	}
	m.stop(t)
}

func TestHelloAnnouncesRenewWithIdentity(t *testing.T) {
	fc := newFakeControl(t, "")
	h := newHarness(t, "", []string{fc.url()}, func(o *Options) { o.Identity = stubRenewer{} })
	h.start()
	h.rec.waitState(t, Connected, 5*time.Second)
	h.stop(t)
	hellos, _, _, _, _ := fc.snapshot()
	hello, err := protocol.DecodePayload[protocol.Hello](hellos[0])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(hello.Capabilities, protocol.CapRenew) || !slices.Contains(hello.Capabilities, protocol.CapQueue) {
		t.Fatalf("hello capabilities %v: want the defaults plus %s", hello.Capabilities, protocol.CapRenew)
	}
}

type stubRenewer struct{}

func (stubRenewer) NeedsRenewal(time.Time) bool        { return false }
func (stubRenewer) RenewalCSR() ([]byte, error)        { return nil, nil }
func (stubRenewer) Install(protocol.Certificate) error { return nil }
