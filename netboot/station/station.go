package station

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lekiwi/heartbeat/netboot/controlapi"
	"github.com/lekiwi/heartbeat/netboot/dhcp"
	"github.com/lekiwi/heartbeat/netboot/outbox"
	"github.com/lekiwi/heartbeat/netboot/tftp"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/raspberrypi"
)

// Control is what the station needs from control; *controlapi.Client is
// one. Errors follow controlapi: controlapi.IsUnreachable means retry
// later, a *controlapi.Refused is an answer to show.
type Control interface {
	SendEvents(ctx context.Context, batch protocol.FactoryEvents) error
	RequestRobot(ctx context.Context, serial, profile string) (protocol.FactoryRobot, error)
	// RobotOnline tells whether control sees the robot online: the end of
	// a board's factory run.
	RobotOnline(ctx context.Context, robotID string) (bool, error)
}

var _ Control = (*controlapi.Client)(nil)

// Config configures a Station. Zero values take the documented defaults.
type Config struct {
	// StateDir holds the board states (boards/) and the event outbox
	// (outbox/). Required.
	StateDir string
	// BootDir holds the boot files served over TFTP to every board, in
	// the Debian raspi-firmware layout (start4.elf, fixup4.dat, *.dtb,
	// overlays/, the kernel and the initramfs). A file in BootDir/pi4/ or
	// BootDir/pi5/ takes precedence for boards of that generation.
	// Required.
	BootDir string
	// Kernel and Initramfs are file names in BootDir that config.txt
	// boots; defaults "vmlinuz" and "initrd.img" (Debian's names).
	Kernel, Initramfs string
	// KernelArgs precede the station's own arguments in cmdline.txt;
	// default DefaultKernelArgs.
	KernelArgs string
	// Image is the raw robot image served at protocol.StationImagePath;
	// Image+".bmap" is its block map. Required.
	Image string
	// ImageVersion is told to boards in the plan; default the image's file
	// name.
	ImageVersion string
	// ProfileImages are the images for boards matched to a profile
	// (profile name → raw image, its .bmap next to it; the plan's version
	// is the file name). A board whose profile is not listed gets Image.
	// A floor making LeKiwi and XLE robots needs both: an image is built
	// for one profile, and a board refuses an image of another.
	ProfileImages map[string]string

	// HTTPAddr and TFTPAddr are the listen addresses; defaults ":8080"
	// and ":69". Port 0 picks a free port (tests).
	HTTPAddr, TFTPAddr string
	// StationURL is the URL boards reach the HTTP API at, put into
	// cmdline.txt. Default http://<DHCP.ServerIP>:<HTTP port>; required
	// when DHCP is nil and HTTPAddr has no host.
	StationURL string
	// DHCP configures the DHCP server; nil runs none (another proxyDHCP,
	// or tests). Its Registerer, Now and Logger default to the station's.
	DHCP *dhcp.Config
	// TFTPMaxBlockSize caps blksize; default tftp.DefaultMaxBlockSize.
	// TFTPTimeout is the wait for each ACK (default 2 s, 5 retries); a
	// stopping station waits up to 5 of them for a silent client.
	TFTPMaxBlockSize int
	TFTPTimeout      time.Duration

	// Control is control's factory API. Required.
	Control Control
	// ControlTimeout bounds one identity request made while a board
	// waits for its answer; default 5 s.
	ControlTimeout time.Duration
	// IdentityRetry and IdentityMaxBackoff pace the background requests
	// for boards waiting for their identity; defaults 1 s and 30 s.
	IdentityRetry, IdentityMaxBackoff time.Duration
	// EventRetry and EventMaxBackoff pace the outbox; defaults 500 ms
	// and 30 s.
	EventRetry, EventMaxBackoff time.Duration
	// PlanRetryAfter is what a waiting board is told to wait before it
	// polls the plan again; default 5 s.
	PlanRetryAfter time.Duration
	// MaxBoards bounds the boards the station tracks (each is a file):
	// a TFTP request for a new serial beyond it is refused. Default 10000.
	MaxBoards int

	// Registerer receives the metrics of the station and its DHCP and
	// TFTP servers; Gatherer serves /metrics. Either may be nil.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	Logger     *slog.Logger
	Now        func() time.Time
}

// DefaultKernelArgs is the start of every cmdline.txt: a console on the
// serial header and the screen, and the initramfs's init.
const DefaultKernelArgs = "console=serial0,115200 console=tty1 rdinit=/init"

// Station is a running netboot station. Make it with New, serve with Run.
type Station struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	control Control
	store   *boardStore
	outbox  *outbox.Outbox
	boot    *bootFiles
	tftp    *tftp.Server
	dhcp    *dhcp.Server
	metrics *metrics
	image   robotImage            // Image
	images  map[string]robotImage // ProfileImages

	httpLn   net.Listener
	tftpConn *net.UDPConn
	http     *http.Server

	mu     sync.Mutex
	boards map[string]*Board
	tokens map[string]string // board token → serial
}

// New checks cfg, loads the state, opens the outbox and binds the HTTP and
// TFTP sockets (so their addresses are known before Run). DHCP sockets are
// opened by Run. Close undoes New when Run is never called.
func New(cfg Config) (_ *Station, err error) {
	if cfg.StateDir == "" || cfg.BootDir == "" || cfg.Image == "" {
		return nil, errors.New("station: StateDir, BootDir and Image are required")
	}
	if cfg.Control == nil {
		return nil, errors.New("station: Control is required: the station gets robot identities from control")
	}
	if cfg.Kernel == "" {
		cfg.Kernel = "vmlinuz"
	}
	if cfg.Initramfs == "" {
		cfg.Initramfs = "initrd.img"
	}
	if cfg.KernelArgs == "" {
		cfg.KernelArgs = DefaultKernelArgs
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = ":8080"
	}
	if cfg.TFTPAddr == "" {
		cfg.TFTPAddr = ":69"
	}
	if cfg.ControlTimeout <= 0 {
		cfg.ControlTimeout = 5 * time.Second
	}
	if cfg.IdentityRetry <= 0 {
		cfg.IdentityRetry = time.Second
	}
	if cfg.IdentityMaxBackoff < cfg.IdentityRetry {
		cfg.IdentityMaxBackoff = max(30*time.Second, cfg.IdentityRetry)
	}
	if cfg.EventRetry <= 0 {
		cfg.EventRetry = 500 * time.Millisecond
	}
	if cfg.EventMaxBackoff < cfg.EventRetry {
		cfg.EventMaxBackoff = max(30*time.Second, cfg.EventRetry)
	}
	if cfg.PlanRetryAfter <= 0 {
		cfg.PlanRetryAfter = 5 * time.Second
	}
	if cfg.MaxBoards <= 0 {
		cfg.MaxBoards = 10000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Station{cfg: cfg, log: cfg.Logger.With("component", "station"), now: cfg.Now, control: cfg.Control, tokens: map[string]string{}}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	if s.image, err = openRobotImage(cfg.Image, cfg.ImageVersion); err != nil {
		return nil, err
	}
	s.images = map[string]robotImage{}
	for profile, path := range cfg.ProfileImages {
		if s.images[profile], err = openRobotImage(path, ""); err != nil {
			return nil, fmt.Errorf("%w (the image for profile %s)", err, profile)
		}
	}

	if s.store, err = openBoardStore(cfg.StateDir); err != nil {
		return nil, err
	}
	if s.boards, err = s.store.load(); err != nil {
		return nil, err
	}
	for serial, b := range s.boards {
		if b.Token != "" {
			s.tokens[b.Token] = serial
		}
		if b.Step == StepIdentity && b.Status == StatusStarted {
			// The station stopped while asking: the loop asks again.
			b.Status = StatusWaiting
		}
	}
	if s.outbox, err = outbox.Open(filepath.Join(cfg.StateDir, "outbox"), cfg.Now); err != nil {
		return nil, fmt.Errorf("station: %w", err)
	}
	if s.metrics, err = newMetrics(cfg.Registerer, s); err != nil {
		return nil, err
	}
	if s.boot, err = openBootFiles(s); err != nil {
		return nil, err
	}
	if s.tftp, err = tftp.New(tftp.Config{Resolver: s.boot, MaxBlockSize: cfg.TFTPMaxBlockSize, Timeout: cfg.TFTPTimeout,
		Registerer: cfg.Registerer, OnTransfer: s.onTransfer, Logger: cfg.Logger.With("component", "tftp")}); err != nil {
		return nil, fmt.Errorf("station: %w", err)
	}
	if cfg.DHCP != nil {
		dc := *cfg.DHCP
		if dc.Registerer == nil {
			dc.Registerer = cfg.Registerer
		}
		if dc.Now == nil {
			dc.Now = cfg.Now
		}
		if dc.Logger == nil {
			dc.Logger = cfg.Logger
		}
		if s.dhcp, err = dhcp.New(dc); err != nil {
			return nil, fmt.Errorf("station: %w", err)
		}
	}

	ua, err := net.ResolveUDPAddr("udp", cfg.TFTPAddr)
	if err != nil {
		return nil, fmt.Errorf("station: TFTP address %q: %w", cfg.TFTPAddr, err)
	}
	if s.tftpConn, err = net.ListenUDP("udp", ua); err != nil {
		return nil, fmt.Errorf("station: TFTP on %s (port 69 needs root or CAP_NET_BIND_SERVICE): %w", cfg.TFTPAddr, err)
	}
	if s.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("station: HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	if s.cfg.StationURL == "" {
		host, _, _ := net.SplitHostPort(cfg.HTTPAddr)
		if cfg.DHCP != nil && cfg.DHCP.ServerIP.IsValid() {
			host = cfg.DHCP.ServerIP.String()
		}
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			return nil, fmt.Errorf("station: cannot tell boards where the HTTP API is (listening on %s): set StationURL (--server-ip)", cfg.HTTPAddr)
		}
		port := s.httpLn.Addr().(*net.TCPAddr).Port
		s.cfg.StationURL = "http://" + net.JoinHostPort(host, strconv.Itoa(port))
	}
	s.http = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// robotImage is an image the station serves.
type robotImage struct {
	path, version string
	size          int64
}

func openRobotImage(path, version string) (robotImage, error) {
	st, err := os.Stat(path)
	if err != nil {
		return robotImage{}, fmt.Errorf("station: the robot image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return robotImage{}, fmt.Errorf("station: the robot image %s is not a regular file (give the raw image, with its .bmap next to it)", path)
	}
	if version == "" {
		version = filepath.Base(path)
	}
	return robotImage{path: path, version: version, size: st.Size()}, nil
}

// imageFor is the image for a board of profile.
func (s *Station) imageFor(profile string) robotImage {
	if img, ok := s.images[profile]; ok {
		return img
	}
	return s.image
}

// HTTPAddr is the bound HTTP address; TFTPAddr the bound TFTP address;
// StationURL what boards are told.
func (s *Station) HTTPAddr() net.Addr    { return s.httpLn.Addr() }
func (s *Station) TFTPAddr() net.Addr    { return s.tftpConn.LocalAddr() }
func (s *Station) StationURL() string    { return s.cfg.StationURL }
func (s *Station) Outbox() outbox.Status { return s.outbox.Status() }

// Run serves DHCP (when configured), TFTP and HTTP, delivers events to
// control and keeps asking control for the identities boards wait for,
// until ctx ends. It closes the station before it returns.
func (s *Station) Run(ctx context.Context) error {
	defer s.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	if s.dhcp != nil {
		if err := s.dhcp.Start(ctx); err != nil {
			return fmt.Errorf("station: %w", err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); s.snoop(ctx) }()
	}
	wg.Add(5)
	go func() {
		defer wg.Done()
		if err := s.tftp.Serve(ctx, s.tftpConn); err != nil {
			errc <- err
		}
	}()
	go func() {
		defer wg.Done()
		if err := s.http.Serve(s.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("station: HTTP: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		s.outbox.Run(ctx, s.control.SendEvents, s.cfg.EventRetry, s.cfg.EventMaxBackoff)
	}()
	go func() { defer wg.Done(); s.identityLoop(ctx) }()
	go func() { defer wg.Done(); s.onlineLoop(ctx) }()
	s.log.Info("netboot station serving", "http", s.HTTPAddr(), "tftp", s.TFTPAddr(), "url", s.cfg.StationURL, "dhcp", s.dhcp != nil)

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		cancel()
	}
	shut, done := context.WithTimeout(context.Background(), 5*time.Second)
	_ = s.http.Shutdown(shut)
	done()
	if s.dhcp != nil {
		s.dhcp.Close()
	}
	wg.Wait()
	return err
}

// Close releases what New opened. Run calls it.
func (s *Station) Close() error {
	var errs []error
	if s.http != nil {
		errs = append(errs, s.http.Close())
	}
	if s.httpLn != nil {
		s.httpLn.Close()
	}
	if s.tftpConn != nil {
		s.tftpConn.Close()
	}
	if s.dhcp != nil {
		s.dhcp.Close()
	}
	if s.boot != nil {
		errs = append(errs, s.boot.Close())
	}
	if s.outbox != nil {
		errs = append(errs, s.outbox.Close())
	}
	return errors.Join(errs...)
}

// snoop turns DHCP observations into DeviceSeen events and board state.
func (s *Station) snoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-s.dhcp.Events():
			s.deviceSeen(d)
		}
	}
}

// deviceSeen records one DHCP observation: an event for every device, and
// for a Pi with a serial its board.
func (s *Station) deviceSeen(d dhcp.DeviceSeen) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addEvent(protocol.EventDeviceSeen, "", protocol.DeviceSeen{MAC: d.MAC, IsPi: d.IsPi, Model: d.Model,
		Serial: d.Serial, Revision: d.Revision, FirstSeen: d.FirstSeen.UTC(), LastSeen: d.LastSeen.UTC()})
	if !d.IsPi || !tftp.IsSerial(d.Serial) {
		return
	}
	b, err := s.boardLocked(d.Serial)
	if err != nil {
		s.log.Warn("board not tracked", "serial", d.Serial, "err", err)
		return
	}
	b.MAC = d.MAC
	if d.Revision != "" {
		b.Revision = d.Revision
		b.Model = decodeModel(d.Revision, d.Model)
	}
	if b.FirstSeen.IsZero() || d.FirstSeen.Before(b.FirstSeen) {
		b.FirstSeen = d.FirstSeen.UTC()
	}
	b.LastSeen = d.LastSeen.UTC()
	if b.Step == "" {
		s.setStepLocked(b, StepSeen, StatusDone, b.Model)
		return
	}
	s.saveLocked(b)
}

// decodeModel names the board from its revision code, falling back to what
// DHCP decoded.
func decodeModel(revision, fallback string) string {
	r, err := raspberrypi.ParseRevision(revision)
	if err != nil {
		return fallback
	}
	board, err := r.Decode()
	if err != nil {
		return fallback
	}
	return board.Name()
}

// generation is the boot-protocol family of the board (4, 5) or 0.
func (b *Board) generation() int {
	r, err := raspberrypi.ParseRevision(b.Revision)
	if err != nil || b.Revision == "" {
		return 0
	}
	board, err := r.Decode()
	if err != nil {
		return 0
	}
	return board.Generation()
}

// boardLocked returns the board with serial, creating it.
func (s *Station) boardLocked(serial string) (*Board, error) {
	if b, ok := s.boards[serial]; ok {
		return b, nil
	}
	if len(s.boards) >= s.cfg.MaxBoards {
		return nil, fmt.Errorf("station: already tracking %d boards (MaxBoards): remove finished boards from %s", len(s.boards), s.store.dir)
	}
	now := s.now().UTC()
	b := &Board{Serial: serial, FirstSeen: now, LastSeen: now}
	s.boards[serial] = b
	return b, nil
}

// setStepLocked moves the board and queues a FactoryStep event when the
// step, status or detail changed; it always saves the board.
func (s *Station) setStepLocked(b *Board, step, status, detail string) {
	changed := b.Step != step || b.Status != status || b.Reason != detail
	b.Step, b.Status, b.Reason = step, status, detail
	if changed {
		s.addEvent(protocol.EventFactoryStep, b.RobotID, protocol.FactoryStep{Serial: b.Serial, Step: step, Status: status, Profile: b.Profile, Detail: detail})
		s.log.Info("board step", "serial", b.Serial, "step", step, "status", status, "detail", detail, "robot", b.RobotID)
	}
	s.saveLocked(b)
}

func (s *Station) saveLocked(b *Board) {
	b.UpdatedAt = s.now().UTC()
	if err := s.store.save(b); err != nil {
		// The station keeps working from memory; the log says what to fix.
		s.log.Error("saving board state", "serial", b.Serial, "err", err)
		s.metrics.stateErrors.Inc()
	}
}

func (s *Station) addEvent(typ, robotID string, data any) {
	raw, err := json.Marshal(data)
	if err == nil {
		_, err = s.outbox.Add(protocol.FactoryEvent{Type: typ, Time: s.now().UTC(), RobotID: robotID, Data: raw})
	}
	if err != nil {
		s.log.Error("queueing an event for control", "type", typ, "err", err)
		s.metrics.stateErrors.Inc()
	}
}

// newToken is a board token: 128 random bits in hex.
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// beginBootLocked is called when a board asks for its config.txt: a board
// without a run, or whose run ended, starts a new one with a new token.
// The identity of an unfinished install is kept for the retry.
func (s *Station) beginBootLocked(serial string) (*Board, error) {
	b, err := s.boardLocked(serial)
	if err != nil {
		return nil, err
	}
	if b.Token != "" && !b.finished() && b.Step != StepSeen {
		return b, nil
	}
	if b.Token != "" {
		delete(s.tokens, b.Token)
	}
	b.Token = newToken()
	s.tokens[b.Token] = serial
	b.Installed = false
	b.ControlUnreachableSince, b.LastControlError = time.Time{}, ""
	b.Done, b.Total = 0, 0
	b.LastSeen = s.now().UTC()
	s.setStepLocked(b, StepBoot, StatusStarted, "fetching boot files")
	return b, nil
}
