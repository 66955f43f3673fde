package admission

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func listen(t *testing.T, o Options) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(ln, o)
	t.Cleanup(func() { l.Close() })
	return l
}

func dial(t *testing.T, l *Listener) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// acceptAsync runs Accept on a goroutine and delivers its result.
func acceptAsync(l *Listener) <-chan net.Conn {
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	return ch
}

func mustAccept(t *testing.T, ch <-chan net.Conn, what string) *Conn {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatalf("%s: accept failed", what)
		}
		return c.(*Conn)
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not accepted within 5 s", what)
	}
	return nil
}

func mustWait(t *testing.T, ch <-chan net.Conn, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: accepted although every slot is taken", what)
	case <-time.After(200 * time.Millisecond):
	}
}

// How a slot comes back: each way frees exactly the one slot, and the
// connection waiting in the kernel's queue is accepted then, not before.
func TestSlotReturns(t *testing.T) {
	for _, tc := range []struct {
		name    string
		free    func(c *Conn)
		expired float64
	}{
		{"admitted", func(c *Conn) { c.Admit(); c.Admit() }, 0},
		{"closed", func(c *Conn) { c.Close() }, 0},
		{"admitted then closed", func(c *Conn) { c.Admit(); c.Close() }, 0},
		{"pending timeout", func(c *Conn) {}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{MaxPending: 2, PendingTimeout: time.Hour}
			if tc.expired > 0 {
				o.PendingTimeout = 300 * time.Millisecond
			}
			l := listen(t, o)
			dial(t, l)
			dial(t, l)
			dial(t, l)
			first := mustAccept(t, acceptAsync(l), "first")
			mustAccept(t, acceptAsync(l), "second")
			if l.Pending() != 2 {
				t.Fatalf("pending = %d, want 2", l.Pending())
			}
			third := acceptAsync(l)
			if tc.expired == 0 {
				mustWait(t, third, "third")
			}
			tc.free(first)
			mustAccept(t, third, "third")
			if got := testutil.ToFloat64(l.waits); got != 1 {
				t.Errorf("full count = %v, want 1", got)
			}
			if tc.expired > 0 {
				// Both earlier connections expire; the third holds its slot
				// until its own timeout.
				deadline := time.Now().Add(5 * time.Second)
				for testutil.ToFloat64(l.expired) < 2 && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
			}
			if got := testutil.ToFloat64(l.expired); got < tc.expired || (tc.expired == 0 && got != 0) {
				t.Errorf("expired = %v, want %v or more (0 exactly when not timing out)", got, tc.expired)
			}
			if got, want := testutil.ToFloat64(l.pending), float64(l.Pending()); got != want {
				t.Errorf("pending gauge %v, slots taken %v", got, want)
			}
		})
	}
}

func TestCloseStopsAWaitingAccept(t *testing.T) {
	l := listen(t, Options{MaxPending: 1})
	dial(t, l)
	mustAccept(t, acceptAsync(l), "first")
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	time.Sleep(50 * time.Millisecond)
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still waiting for a slot after Close")
	}
}

// Through net/http with TLS: the handler finds its connection, API
// requests are admitted on arrival, and a handler that does not admit
// (the robots' endpoint before hello) keeps the slot until it does.
func TestHTTPAdmission(t *testing.T) {
	reg := prometheus.NewRegistry()
	mux := http.NewServeMux()
	hold := make(chan struct{})
	mux.Handle("/api", AdmitRequests(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))
	mux.HandleFunc("/agent", func(w http.ResponseWriter, r *http.Request) {
		c := FromContext(r.Context())
		if c == nil {
			http.Error(w, "no admission conn in context", http.StatusInternalServerError)
			return
		}
		<-hold
		c.Admit()
	})
	srv := httptest.NewUnstartedServer(mux)
	ln := NewListener(srv.Listener, Options{MaxPending: 4, Registerer: reg})
	srv.Listener = ln
	srv.Config.ConnContext = ConnContext
	srv.StartTLS()
	defer srv.Close()
	client := srv.Client()

	resp, err := client.Get(srv.URL + "/api")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ln.Pending() != 0 {
		t.Fatalf("API request: %d slots still taken (keep-alive connection not admitted)", ln.Pending())
	}

	errc := make(chan error, 1)
	go func() {
		tr := &http.Transport{TLSClientConfig: client.Transport.(*http.Transport).TLSClientConfig, DisableKeepAlives: true}
		resp, err := (&http.Client{Transport: tr}).Get(srv.URL + "/agent")
		if err == nil {
			if resp.StatusCode != http.StatusOK {
				err = errors.New(resp.Status)
			}
			resp.Body.Close()
		}
		errc <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for ln.Pending() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ln.Pending() != 1 {
		t.Fatalf("agent request in its handler: %d slots taken, want 1", ln.Pending())
	}
	close(hold)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for ln.Pending() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if ln.Pending() != 0 {
		t.Fatalf("after admit: %d slots taken", ln.Pending())
	}
	if n, err := testutil.GatherAndCount(reg, "lekiwi_control_admission_pending", "lekiwi_control_admission_full_total", "lekiwi_control_admission_expired_total"); err != nil || n != 3 {
		t.Fatalf("metrics registered: %d, %v", n, err)
	}
}

// Admitted connections still count against MaxOpen until they close: the
// file descriptors left are the database's.
func TestMaxOpenCountsAdmittedConnections(t *testing.T) {
	l := listen(t, Options{MaxPending: 8, MaxOpen: 2})
	for range 3 {
		dial(t, l)
	}
	first := mustAccept(t, acceptAsync(l), "first")
	second := mustAccept(t, acceptAsync(l), "second")
	first.Admit()
	second.Admit()
	third := acceptAsync(l)
	mustWait(t, third, "third (two open, admitted)")
	first.Close()
	first.Close() // a second Close must not free a second slot
	mustAccept(t, third, "third after a close")
	fourth := acceptAsync(l)
	dial(t, l)
	mustWait(t, fourth, "fourth (two open again)")
	if got := testutil.ToFloat64(l.openFull); got < 1 {
		t.Errorf("open_full = %v, want at least 1", got)
	}
	if got := testutil.ToFloat64(l.openGauge); got != 2 {
		t.Errorf("open gauge = %v, want 2", got)
	}
}

func TestReserveFor(t *testing.T) {
	for _, tc := range []struct {
		limit   uint64
		reserve int
		want    int
	}{
		{20000, 512, 19488},
		{1024, 512, 512},
		{100, 512, 1},
		{1 << 62, 512, 1<<30 - 512},
	} {
		if got := ReserveFor(tc.limit, tc.reserve); got != tc.want {
			t.Errorf("ReserveFor(%d, %d) = %d, want %d", tc.limit, tc.reserve, got, tc.want)
		}
	}
}

// A connection whose client gave up while it waited in the accept queue is
// closed without being handed out (no handshake for nobody); the next live
// one is.
func TestAbandonedConnectionsAreSkipped(t *testing.T) {
	l := listen(t, Options{MaxPending: 4})
	gone := dial(t, l)
	gone.Close()
	live := dial(t, l)
	// Let the FIN arrive (loopback: immediate, but asynchronous).
	time.Sleep(50 * time.Millisecond)
	c := mustAccept(t, acceptAsync(l), "live connection")
	if c.RemoteAddr().String() != live.LocalAddr().String() {
		t.Fatalf("accepted %s, want the live client %s (the closed one is %s)", c.RemoteAddr(), live.LocalAddr(), gone.LocalAddr())
	}
	if got := testutil.ToFloat64(l.abandoned); got != 1 {
		t.Fatalf("abandoned = %v, want 1", got)
	}
	if l.Pending() != 1 {
		t.Fatalf("pending = %d, want 1 (the skipped connection holds no slot)", l.Pending())
	}
}

// expectReset reads from c until the server's reset arrives.
func expectReset(t *testing.T, c net.Conn, within time.Duration, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("%s: read %v, want a connection reset within %v", what, err, within)
	}
}

// While every slot is taken, a connection that has waited MaxQueueWait —
// counting its time in the kernel's queue before Accept ever saw it — is
// reset without a handshake, and the next one is accepted when a slot
// frees.
func TestQueuedTooLongIsShed(t *testing.T) {
	l := listen(t, Options{MaxPending: 1, MaxQueueWait: 300 * time.Millisecond})
	dial(t, l)
	first := mustAccept(t, acceptAsync(l), "first")

	// Queued in the kernel for longer than MaxQueueWait before Accept runs:
	// shed as soon as Accept looks at it.
	old := dial(t, l)
	if _, err := old.Write([]byte("client hello")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	next := acceptAsync(l)
	expectReset(t, old, 150*time.Millisecond, "connection queued 500 ms")

	// Queued for less: held until its wait is up, then shed.
	young := dial(t, l)
	start := time.Now()
	expectReset(t, young, 2*time.Second, "connection waiting for a slot")
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Fatalf("young connection reset after %v, before its 300 ms wait was up", waited)
	}
	mustWait(t, next, "after shedding")
	if got := testutil.ToFloat64(l.shed); got != 2 {
		t.Fatalf("shed = %v, want 2", got)
	}

	// A slot frees while the next one waits: it is accepted, not shed.
	fresh := dial(t, l)
	time.Sleep(100 * time.Millisecond)
	first.Admit()
	c := mustAccept(t, next, "connection waiting when a slot frees")
	if c.RemoteAddr().String() != fresh.LocalAddr().String() {
		t.Fatalf("accepted %s, want %s", c.RemoteAddr(), fresh.LocalAddr())
	}
	if got := testutil.ToFloat64(l.shed); got != 2 {
		t.Fatalf("shed = %v after a slot freed in time, want still 2", got)
	}
	if got := testutil.ToFloat64(l.openGauge); got != 2 {
		t.Fatalf("open = %v, want 2 (shed connections are not counted)", got)
	}
}

func TestQueuedForCountsKernelQueueTime(t *testing.T) {
	l := listen(t, Options{})
	cl := dial(t, l)
	if _, err := cl.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	c, err := l.Listener.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if q := queuedFor(c); q < 250*time.Millisecond || q > 5*time.Second {
		t.Fatalf("queuedFor = %v after 300 ms in the accept queue", q)
	}
	if q := queuedFor(nil); q != 0 {
		t.Fatalf("queuedFor(non-TCP) = %v, want 0", q)
	}
}
