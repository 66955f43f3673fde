// Package tftp is the netboot station's read-only TFTP server for Raspberry
// Pi network boot, on top of github.com/pin/tftp/v3.
//
// Requests are "<serial>/<file>" (or a bare "<file>"); a Resolver decides what
// each board gets, so per-model boot files can come from a directory and the
// generated config.txt/cmdline.txt from memory. Block size is negotiated up to
// a cap (1468 by default: the largest that fits an Ethernet frame), tsize is
// answered, and the Pi bootloader's habit of asking for a file with tsize and
// then ending the transfer with an ERROR right after our OACK (its size probe,
// "early terminate") is counted as a probe, not a failure.
package tftp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	pintftp "github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// Resolver decides what a board gets for a requested file.
//
// serial is the board serial from the path (8 lowercase hex digits) or "" for
// a bare request; file is the rest of the path, already validated by
// ParsePath. Open returns the content and its exact size; if content also
// implements io.Closer it is closed when the transfer ends. Return an error
// wrapping fs.ErrNotExist when there is nothing to serve (the Pi asks for
// several optional files). Open must not block longer than ctx allows.
type Resolver interface {
	Open(ctx context.Context, serial, file string, client netip.AddrPort) (content io.ReaderAt, size int64, err error)
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(ctx context.Context, serial, file string, client netip.AddrPort) (io.ReaderAt, int64, error)

// Open calls f.
func (f ResolverFunc) Open(ctx context.Context, serial, file string, client netip.AddrPort) (io.ReaderAt, int64, error) {
	return f(ctx, serial, file, client)
}

// Result is how one read request ended.
type Result string

const (
	ResultCompleted Result = "completed" // every block acknowledged
	ResultProbe     Result = "probe"     // client ended the transfer after our OACK, before any data: the Pi's tsize probe
	ResultFailed    Result = "failed"    // timeout, client error during data, shutdown, read error
	ResultNotFound  Result = "not_found" // the resolver had nothing for this serial/file
	ResultRejected  Result = "rejected"  // the name failed ParsePath
)

// Transfer reports one finished read request to Config.OnTransfer.
type Transfer struct {
	Client netip.AddrPort
	Path   string // as requested (may be invalid when Result is ResultRejected)
	Serial string // "" for bare requests
	File   string
	Kind   string // one of the Kind constants
	Size   int64  // what the resolver returned; 0 if it returned nothing
	Bytes  int64  // file bytes sent in DATA packets
	// BlockSize is the negotiated blksize (512 without negotiation) and
	// Retransmits the DATA/OACK packets sent again for lack of an ACK; both
	// are known only once sending began.
	BlockSize   int
	Retransmits int
	Duration    time.Duration
	Result      Result
	Err         error // nil for ResultCompleted; for ResultProbe the client's ERROR
}

// Config configures a Server. Only Resolver is required.
type Config struct {
	Resolver Resolver

	// MaxBlockSize caps the blksize a client may negotiate; requests above
	// it are answered with it. Default 1468 (fits a 1500-byte MTU with room
	// for VLAN tags). Must be in 513..65464: pin/tftp cannot cap at 512.
	// It is not clamped to the interface MTU: keep it at or below MTU-32.
	MaxBlockSize int
	// Timeout is how long to wait for each ACK before retransmitting
	// (default 2 s); Retries how often (default 5).
	Timeout time.Duration
	Retries int

	// Registerer receives the metrics; nil means none are registered.
	Registerer prometheus.Registerer
	// OnTransfer, if set, is called once per read request when it ends, from
	// the transfer's goroutine: keep it quick and concurrency-safe.
	OnTransfer func(Transfer)
	// Logger; nil discards.
	Logger *slog.Logger
}

// DefaultMaxBlockSize is the blksize cap when Config.MaxBlockSize is zero.
const DefaultMaxBlockSize = 1468

// Server is a read-only TFTP server. Serve may be called more than once
// (sequentially or on several sockets at the same time).
type Server struct {
	resolver   Resolver
	maxBlock   int
	timeout    time.Duration
	retries    int
	metrics    *metrics
	onTransfer func(Transfer)
	log        *slog.Logger
	// stats carries pin/tftp's per-transfer statistics from its Hook to
	// the read handler that is waiting in ReadFrom; key: statsKey.
	stats sync.Map
}

// New checks cfg and registers the metrics.
func New(cfg Config) (*Server, error) {
	if cfg.Resolver == nil {
		return nil, errors.New("tftp: Config.Resolver is required: it decides what each board gets")
	}
	if cfg.MaxBlockSize == 0 {
		cfg.MaxBlockSize = DefaultMaxBlockSize
	}
	if cfg.MaxBlockSize <= 512 || cfg.MaxBlockSize > 65464 {
		return nil, fmt.Errorf("tftp: MaxBlockSize %d out of range 513..65464", cfg.MaxBlockSize)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Server{
		resolver:   cfg.Resolver,
		maxBlock:   cfg.MaxBlockSize,
		timeout:    cfg.Timeout,
		retries:    cfg.Retries,
		metrics:    m,
		onTransfer: cfg.OnTransfer,
		log:        cfg.Logger,
	}, nil
}

// ListenAndServe listens on the UDP address addr (e.g. ":69" or
// "192.168.1.10:69") and serves until ctx is cancelled.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return fmt.Errorf("tftp: resolving listen address %q: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return fmt.Errorf("tftp: listening on %q (port 69 needs root or CAP_NET_BIND_SERVICE): %w", addr, err)
	}
	return s.Serve(ctx, conn)
}

// Serve answers read requests arriving on conn until ctx is cancelled, then
// closes conn, aborts running transfers at their next block and returns nil
// once they have all ended (bounded by Timeout×Retries for a client that has
// gone silent). Each transfer runs on its own ephemeral port, as TFTP wants.
func (s *Server) Serve(ctx context.Context, conn *net.UDPConn) error {
	srv := pintftp.NewServer(s.readHandler(ctx), nil) // nil write handler: read-only
	srv.SetBlockSize(s.maxBlock)
	// pin/tftp's MTU-based clamp falls back to 512 whenever a request
	// arrives without IP_PKTINFO, which happens to requests already queued
	// on the socket before Serve enables it: a Pi booting while the station
	// restarts would get 512-byte blocks. MaxBlockSize is the cap instead.
	srv.SetBlockSizeNegotiation(false)
	srv.SetTimeout(s.timeout)
	srv.SetRetries(s.retries)
	srv.SetHook(statsHook{s})

	serveReturned := make(chan struct{})
	shutdownDone := make(chan struct{})
	go func() {
		defer close(shutdownDone)
		select {
		case <-ctx.Done():
			srv.Shutdown()
		case <-serveReturned:
		}
	}()
	err := srv.Serve(conn)
	close(serveReturned)
	<-shutdownDone
	if err != nil {
		return fmt.Errorf("tftp: serving on %s: %w", conn.LocalAddr(), err)
	}
	return nil
}

func (s *Server) readHandler(ctx context.Context) func(string, io.ReaderFrom) error {
	return func(name string, rf io.ReaderFrom) error {
		t := Transfer{Path: name, Kind: KindInvalid}
		if ot, ok := rf.(pintftp.OutgoingTransfer); ok {
			ra := ot.RemoteAddr()
			ap := ra.AddrPort()
			t.Client = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
		start := time.Now()
		err := s.serve(ctx, rf, &t)
		t.Duration = time.Since(start)
		s.finish(t)
		return err
	}
}

// serve fills t and returns the error pin/tftp should send to the client
// (nil when the transfer already ran and pin/tftp has answered itself).
func (s *Server) serve(ctx context.Context, rf io.ReaderFrom, t *Transfer) error {
	serial, file, err := ParsePath(t.Path)
	if err != nil {
		t.Result, t.Err = ResultRejected, err
		return errors.New("invalid file name")
	}
	t.Serial, t.File, t.Kind = serial, file, KindOf(file)

	content, size, err := s.resolver.Open(ctx, serial, file, t.Client)
	if err != nil {
		t.Err = err
		if errors.Is(err, fs.ErrNotExist) {
			t.Result = ResultNotFound
			return errors.New("file not found")
		}
		t.Result = ResultFailed
		return errors.New("file not available")
	}
	if c, ok := content.(io.Closer); ok {
		defer c.Close()
	}
	if size < 0 {
		t.Result, t.Err = ResultFailed, fmt.Errorf("resolver returned negative size %d for %q", size, t.Path)
		return errors.New("file not available")
	}
	t.Size = size

	s.metrics.started.WithLabelValues(t.Kind).Inc()
	s.metrics.inFlight.Inc()
	defer s.metrics.inFlight.Dec()

	if ot, ok := rf.(pintftp.OutgoingTransfer); ok {
		ot.SetSize(size) // answered only when the client asked for tsize
	}
	// body deliberately hides Seek: pin/tftp would seek to find the size,
	// and a Read before any data goes out is how a probe is told apart.
	// The buffer turns one pread per block into one per 128 KiB (no more
	// than the file needs, as many small files are in flight at once).
	bufSize := int(min(size, 128<<10))
	body := &contextReader{ctx: ctx, r: bufio.NewReaderSize(io.NewSectionReader(content, 0, size), bufSize)}
	key := statsKey(t.Client, t.Path)
	s.stats.Store(key, (*pintftp.TransferStats)(nil))
	n, err := rf.ReadFrom(body)
	t.Bytes = n
	switch {
	case err == nil:
		t.Result = ResultCompleted
	case !body.read && ctx.Err() == nil && !isNetError(err):
		// pin/tftp surfaces a client ERROR in reply to the OACK as a plain
		// error ("sending block 0: code=0, error: ...") before asking us for
		// data; timeouts and socket errors are net.Errors. That is the Pi's
		// tsize probe.
		t.Result, t.Err = ResultProbe, err
	default:
		t.Result, t.Err = ResultFailed, err
	}
	if v, ok := s.stats.LoadAndDelete(key); ok {
		if st, _ := v.(*pintftp.TransferStats); st != nil {
			t.BlockSize = 512
			if bs, err := strconv.Atoi(st.Opts["blksize"]); err == nil {
				t.BlockSize = bs
			}
			unacked := 0 // the packet the transfer ended on, when it ended early
			if t.Result != ResultCompleted {
				unacked = 1
			}
			t.Retransmits = max(0, st.DatagramsSent-st.DatagramsAcked-unacked)
		}
	}
	return nil // pin/tftp has already sent or received the ERROR
}

func (s *Server) finish(t Transfer) {
	s.metrics.finished.WithLabelValues(t.Kind, string(t.Result)).Inc()
	if t.Bytes > 0 {
		s.metrics.bytes.WithLabelValues(t.Kind).Add(float64(t.Bytes))
	}
	if t.Result == ResultCompleted {
		s.metrics.duration.WithLabelValues(t.Kind).Observe(t.Duration.Seconds())
	}
	level := slog.LevelDebug
	if t.Result == ResultFailed || t.Result == ResultRejected {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, "tftp transfer", "client", t.Client, "path", t.Path,
		"kind", t.Kind, "result", t.Result, "bytes", t.Bytes, "duration", t.Duration, "err", t.Err)
	if s.onTransfer != nil {
		s.onTransfer(t)
	}
}

// statsHook receives pin/tftp's TransferStats, which are the only place the
// negotiated options and datagram counts are exposed.
type statsHook struct{ s *Server }

func (h statsHook) OnSuccess(st pintftp.TransferStats) { h.record(st) }

func (h statsHook) OnFailure(st pintftp.TransferStats, err error) {
	if st.Filename == "" { // a malformed request packet, reported by the serve loop
		h.s.log.Debug("tftp: ignored packet", "err", err)
		return
	}
	h.record(st)
}

func (h statsHook) record(st pintftp.TransferStats) {
	ip, ok := netip.AddrFromSlice(st.RemoteAddr)
	if !ok || st.Tid < 0 || st.Tid > 65535 {
		return
	}
	key := statsKey(netip.AddrPortFrom(ip.Unmap(), uint16(st.Tid)), st.Filename)
	if _, waiting := h.s.stats.Load(key); waiting {
		h.s.stats.Store(key, &st)
	}
}

func statsKey(client netip.AddrPort, path string) string {
	return netip.AddrPortFrom(client.Addr().Unmap(), client.Port()).String() + "\x00" + path
}

func isNetError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne)
}

// contextReader stops a transfer at the next block once the server is
// shutting down, and records whether the transfer ever asked for data.
type contextReader struct {
	ctx  context.Context
	r    io.Reader
	read bool
}

func (c *contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, fmt.Errorf("TFTP server shutting down: %w", err)
	}
	c.read = true
	return c.r.Read(p)
}
