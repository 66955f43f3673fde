package pid1

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lekiwi/heartbeat/agent/factory"
	"github.com/lekiwi/heartbeat/agent/reboot"
	"github.com/lekiwi/heartbeat/internal/version"
)

// Options say where the init finds its world. Zero values are PID 1's in
// the initramfs.
type Options struct {
	// Root is the initramfs's root directory; default "/". What the init
	// mounts, reads and writes is under it, and the disk boot's new root
	// is mounted at Root/sysroot and then moved onto Root.
	Root string
	// Cmdline replaces the kernel command line (Root/proc/cmdline).
	Cmdline string
	// Args are the kernel's arguments for init (PID 1's argv[1:]), which
	// the disk boot hands on to the root filesystem's init; Env is the
	// environment it gets (default os.Environ(), which the kernel filled).
	Args, Env []string
	// Console receives the init's lines, each prefixed with the time since
	// boot. Default: Root/dev/console once /dev is mounted, which PID 1
	// also makes its stdin, stdout and stderr.
	Console io.Writer
	// Modules loads kernel modules; default finit_module(2).
	Modules ModuleLoader
	// FactoryBackoff is the wait before the factory run starts again
	// after failing, doubled each time up to 5 minutes; default 10 s.
	FactoryBackoff time.Duration

	// runFactory replaces factory.Run in tests.
	runFactory func(context.Context, factory.RunOptions) error
	// net tunes the network step in tests.
	net netConfig
}

// maxFactoryBackoff bounds the wait between factory runs: a board must
// not sit for long after the station or the network came back.
const maxFactoryBackoff = 5 * time.Minute

// IsInit reports whether a process started with argv0 as pid is the
// initramfs's init: PID 1 under the name init (/init links to the agent).
func IsInit(argv0 string, pid int) bool {
	return pid == 1 && filepath.Base(argv0) == "init"
}

// Main is PID 1's entry point: Run with the kernel's arguments for init,
// and never return — PID 1 exiting panics the kernel.
func Main(args []string) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "init: BUG: %v: the init stopped; power-cycle the board and report this line\n", r)
		}
		for {
			time.Sleep(time.Hour)
		}
	}()
	_ = Run(context.Background(), Options{Args: args})
}

// Run does PID 1's work (see the package comment). It returns only when
// ctx ends, when the factory run's reboot hook returns, or with the error
// that stops the init — and then only when not PID 1: PID 1 prints the
// error with what to do and waits for a technician instead.
func Run(ctx context.Context, o Options) error {
	if o.Root == "" {
		o.Root = "/"
	}
	if os.Getpid() != 1 && filepath.Clean(o.Root) == "/" {
		// Mounting over /tmp, taking the links' addresses or moving /dev
		// away is an initramfs's business, not a running system's.
		return errors.New("the init works on the real root only as PID 1: give another root directory (agent init --root DIR, in a mount namespace of its own)")
	}
	if o.Env == nil {
		o.Env = os.Environ()
	}
	if o.Modules == nil {
		o.Modules = finitModule{}
	}
	if o.FactoryBackoff <= 0 {
		o.FactoryBackoff = 10 * time.Second
	}
	if o.runFactory == nil {
		o.runFactory = factory.Run
	}
	mounted, mountErr := mountEarly(o.Root)
	con := openConsole(o)
	con.Printf("Lekiwi agent %s as init (pid %d)", version.String(), os.Getpid())
	if len(mounted) > 0 {
		con.Printf("mounted %s", strings.Join(mounted, " "))
	}
	if mountErr != nil {
		con.Printf("mount: %v (steps that need these will fail)", mountErr)
	}
	if os.Getpid() == 1 {
		go holdSignals(ctx, con)
	}
	if err := becomeReaper(); err != nil {
		con.Printf("cannot adopt orphans (%v): zombies may pile up", err)
	}
	go reap(ctx, nil)

	cmdline := o.Cmdline
	if cmdline == "" {
		b, err := os.ReadFile(filepath.Join(o.Root, "proc", "cmdline"))
		if err != nil {
			return fatal(ctx, con, fmt.Errorf("read the kernel command line: %w", err))
		}
		cmdline = string(b)
	}
	boot, bootErr := ParseCmdline(cmdline)
	if bootErr == nil {
		con.Printf("mode %s", boot.Mode)
	}
	loadAll(o, con)
	if bootErr != nil {
		return fatal(ctx, con, fmt.Errorf("%w (command line: %s)", bootErr, strings.TrimSpace(cmdline)))
	}
	switch boot.Mode {
	case Factory:
		return runFactory(ctx, o, boot, con)
	default:
		return bootRoot(ctx, o, boot, con)
	}
}

// openConsole makes the init's console: o.Console, else every terminal
// the kernel prints on (openTerminals), else Root/dev/console, else
// stderr. PID 1 also puts /dev/console on its standard descriptors, so
// that a Go panic, and the root filesystem's init, write there too.
func openConsole(o Options) *Console {
	if o.Console != nil {
		return NewConsole(o.Console, nil)
	}
	f, err := os.OpenFile(filepath.Join(o.Root, "dev", "console"), os.O_RDWR|unix.O_NOCTTY, 0)
	if err == nil && os.Getpid() == 1 {
		for fd := 0; fd <= 2; fd++ {
			_ = unix.Dup3(int(f.Fd()), fd, 0)
		}
	}
	if terms := openTerminals(filepath.Join(o.Root, "sys"), filepath.Join(o.Root, "dev")); len(terms) > 0 {
		return NewConsole(tee(terms), nil)
	}
	if err != nil {
		c := NewConsole(os.Stderr, nil)
		c.Printf("open /dev/console: %v: writing to the inherited stderr", err)
		return c
	}
	return NewConsole(f, nil)
}

// holdSignals keeps PID 1 alive through the signals that would stop a Go
// program (the kernel sends SIGINT on Ctrl-Alt-Del, a shell may send
// SIGTERM): the kernel delivers to PID 1 only the signals it handles, and
// the Go runtime handles them all. Catching them rather than ignoring
// them lets exec give the root filesystem's init default dispositions.
func holdSignals(ctx context.Context, con *Console) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPIPE)
	defer signal.Stop(sig)
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-sig:
			con.Printf("%v received: PID 1 does not stop (power the board off to stop it)", s)
		}
	}
}

// loadAll loads the manifest's modules and prints one line for the step,
// and one per failure.
func loadAll(o Options, con *Console) {
	m, err := readManifest(o.Root)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		con.Printf("modules: no %s: using the kernel's built-in drivers only", ManifestPath)
		return
	case err != nil:
		con.Printf("modules: %v: using the kernel's built-in drivers only", err)
		return
	}
	running := kernelRelease()
	if running != m.KernelRelease {
		con.Printf("modules: the initramfs was built for kernel %s, this is %s: expect them to fail (rebuild the initramfs for %s)", m.KernelRelease, running, running)
	}
	start := time.Now()
	r := loadModules(o.Root, m, running, o.Modules)
	for _, err := range r.Failed {
		con.Printf("modules: %v", err)
	}
	con.Printf("modules: %d loaded, %d already present, %d failed, of %d for %s (%s)", r.Loaded, r.Present, len(r.Failed), len(m.Modules), m.KernelRelease, time.Since(start).Round(time.Millisecond))
}

// fatal prints why the init cannot go on. Not PID 1, it returns err; PID 1
// repeats it every minute (for whoever plugs a screen in later) until ctx
// ends, which in the initramfs it never does.
func fatal(ctx context.Context, con *Console, err error) error {
	for {
		con.Printf("STOPPED: %v", err)
		if os.Getpid() != 1 {
			return err
		}
		con.Printf("nothing more happens on this board: fix the above, then power it off and on")
		if sleep(ctx, time.Minute) != nil {
			return err
		}
	}
}

// runFactory brings up the network and runs the factory flow until it
// reboots the board, starting it again after a backoff whenever it fails.
func runFactory(ctx context.Context, o Options, b Boot, con *Console) error {
	con.Printf("factory: station %s", b.StationURL)
	nc := o.net
	nc.sysRoot, nc.etcDir, nc.logf = filepath.Join(o.Root, "sys"), filepath.Join(o.Root, "etc"), con.Printf
	l, err := bringUpNetwork(ctx, nc)
	if err != nil {
		return err
	}
	keepCtx, stopKeeping := context.WithCancel(ctx)
	kept := make(chan struct{})
	go func() { l.keep(keepCtx, nc); close(kept) }()
	defer func() { stopKeeping(); <-kept; l.Close() }()

	ro := factory.RunOptions{
		StationURL: b.StationURL,
		Token:      b.Token,
		Probe: factory.Options{
			ProcRoot: filepath.Join(o.Root, "proc"),
			SysRoot:  filepath.Join(o.Root, "sys"),
			DevRoot:  filepath.Join(o.Root, "dev"),
		},
		// sync, then reboot(2): there is no service manager to ask —
		// PID 1 itself restarts the board.
		Reboot: reboot.Syscall{},
		Log:    con,
	}
	wait := o.FactoryBackoff
	for attempt := 1; ; attempt++ {
		err := o.runFactory(ctx, ro)
		if err == nil {
			con.Printf("factory: the run finished without rebooting")
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		con.Printf("factory: run %d stopped: %v; starting again in %s (what is done is not redone)", attempt, err, wait)
		if err := sleep(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, maxFactoryBackoff)
	}
}

// bootRoot finds, mounts and switches to the root partition. It keeps
// looking after the root delay (a technician may seat the disk) and
// returns only when ctx ends or switching root failed.
func bootRoot(ctx context.Context, o Options, b Boot, con *Console) error {
	newRoot := filepath.Join(o.Root, "sysroot")
	sysRoot, devRoot := filepath.Join(o.Root, "sys"), filepath.Join(o.Root, "dev")
	mode := "rw"
	if b.ReadOnly {
		mode = "ro"
	}
	con.Printf("root: looking for PARTUUID=%s (%s, %s), up to %s", b.RootPARTUUID, b.RootFSType, mode, b.RootDelay)
	start := time.Now()
	var said string
	var saidAt time.Time
	wasWaiting := true
	for {
		var problem string
		disks, err := listDisks(sysRoot)
		dev := ""
		var views []diskView
		if err == nil {
			dev, views = findPartition(disks, devRoot, b.RootPARTUUID)
		}
		switch {
		case err != nil:
			problem = err.Error()
		case dev == "":
			problem = "disks: " + describe(views)
		default:
			err := mountRoot(dev, newRoot, b)
			if err == nil {
				if err = checkInit(newRoot, b.Init); err != nil {
					_ = unix.Unmount(newRoot, 0)
				}
			}
			if err == nil {
				con.Printf("root: mounted %s (PARTUUID=%s, %s, %s)", dev, b.RootPARTUUID, b.RootFSType, mode)
				argv := append([]string{b.Init}, o.Args...)
				return fatal(ctx, con, fmt.Errorf("switch root to %s: %w", dev, switchRoot(o.Root, newRoot, b.Init, argv, o.Env, con.Printf)))
			}
			problem = err.Error()
		}
		elapsed := time.Since(start)
		waiting := elapsed < b.RootDelay
		every := time.Minute
		if waiting {
			every = 5 * time.Second
		}
		if problem != said || waiting != wasWaiting || time.Since(saidAt) >= every {
			if waiting {
				con.Printf("root: waiting for PARTUUID=%s (%s of %s): %s", b.RootPARTUUID, elapsed.Round(time.Second), b.RootDelay, problem)
			} else {
				con.Printf("root: PARTUUID=%s not bootable after %s: %s", b.RootPARTUUID, elapsed.Round(time.Second), problem)
				con.Printf("root: waiting for a technician: seat the disk, or fix root= in cmdline.txt; still looking every 5 s")
			}
			said, saidAt, wasWaiting = problem, time.Now(), waiting
		}
		pause := 5 * time.Second
		if waiting {
			pause = 250 * time.Millisecond
		}
		if err := sleep(ctx, pause); err != nil {
			return err
		}
	}
}
