package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/lekiwi/heartbeat/image/sparse"
	"github.com/lekiwi/heartbeat/profiles"
	"github.com/lekiwi/heartbeat/provision/bench"
	"github.com/lekiwi/heartbeat/provision/device"
	"github.com/lekiwi/heartbeat/provision/flash"
	"github.com/lekiwi/heartbeat/provision/identity"
	"github.com/lekiwi/heartbeat/provision/progress"
	"github.com/lekiwi/heartbeat/provision/source"
)

type flashFlags struct {
	image, output, tmp, profile string
	noVerify, yes, force, watch bool
	buffered, reissueFailed     bool
	maxSize                     string
	size                        int64
	csv, control, prefix        string
	fleetCA                     string
	interval                    time.Duration
	rf                          registryFlags
}

func newFlash(lookupEnv func(string) (string, bool)) *cobra.Command {
	var f flashFlags
	c := &cobra.Command{
		Use:   "flash --image SRC [--profile P] [--identity-csv F | --identity-control URL] TARGET...",
		Short: "Write one image to many cards at once: sparse, verified, partition table last, one identity per card",
		Long: `Flash reads the image once and writes it to every TARGET in parallel: SD
cards and NVMe drives (whole disks such as /dev/sdb, /dev/mmcblk0,
/dev/disk/by-id/usb-…) or image files.

  - Only mapped data is written: from SRC.bmap when there is one, otherwise
    all-zero blocks are skipped (on a used card the image's range is zeroed
    first, which the device often does at once).
  - The partition table is written last, so a card pulled out half way
    never looks like a good one.
  - Every target is read back with O_DIRECT (from the card, not the page
    cache) and compared with the source's hashes, unless --no-verify.
  - A failing or slow card fails alone; the others finish. The exit status is
    0 only when every target succeeded.

SRC is a raw image, a compressed one (.xz, .zst, .gz: decompressed on the fly,
once, for all cards), an http(s):// URL (streamed, resumed after a dropped
link), or an image in an OCI registry (host[:port]/repo:tag or oci://…).

Safety: block devices that are mounted, hold the running system or are
write-protected are refused; so are non-removable disks and disks larger
than --max-size unless --force. One refusal stops the whole run before
anything is written. The devices are shown (model, size, serial) and you
confirm by typing yes, unless --yes. The source is described first (size,
MBR or GPT, partitions); one with no partition table is not a disk image
and is refused unless --force.

Per-card identity: with --identity-csv each card takes the next unused row of
a batch file (robot_id, hostname, enroll_token or cert+key) — rows are
journaled in FILE.used and never handed out twice; with --identity-control
control mints a robot id and a one-time enrollment token per card (needs an
engineer's token: --token, --token-file or LEKIWI_TOKEN). The identity is
written after verification, with the same code as provision image customize.

--watch keeps running and flashes every card inserted afterwards (a USB hub
of card readers): removable disks only, each checked like the others.`,
		Example: `  # Four cards from a compressed image, each with its own identity from control.
  LEKIWI_TOKEN=$(cat ~/.lekiwi-token) provision flash --image lekiwi-1.4.0.img.zst \
    --profile lekiwi --identity-control https://control.lan:8443 --ca-file fleet-ca/ca.crt \
    /dev/sdb /dev/sdc /dev/sdd /dev/sde

  # Image files, for a lab or a CI job; JSON for scripts.
  provision flash --image lekiwi.img --output json out/a.img out/b.img | jq '.[] | select(.ok|not)'

  # The bench: flash every card pushed into a reader, with rows of a batch file.
  provision flash --watch --yes --image lekiwi.img --identity-csv batch-2026-11.csv`,
		RunE: func(cmd *cobra.Command, targets []string) error {
			return runFlash(cmd, f, targets, lookupEnv)
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.image, "image", "", "image to write: raw, .xz, .zst, .gz, http(s):// URL, or OCI reference")
	fl.StringVar(&f.profile, "profile", "", "robot profile (lekiwi or xle): host names and robot id prefix for identities")
	fl.StringVarP(&f.output, "output", "o", "table", "table or json")
	fl.BoolVar(&f.noVerify, "no-verify", false, "skip reading the targets back (not recommended)")
	fl.BoolVarP(&f.yes, "yes", "y", false, "do not ask before overwriting block devices")
	fl.BoolVar(&f.force, "force", false, "allow non-removable disks, disks larger than --max-size, and a source with no partition table")
	fl.StringVar(&f.maxSize, "max-size", "512GB", "largest disk accepted without --force (e.g. 256GB, 1TB; 0 for no limit)")
	fl.BoolVar(&f.watch, "watch", false, "keep running and flash every card inserted from now on")
	fl.DurationVar(&f.interval, "watch-interval", time.Second, "how often --watch looks for new cards (uevents wake it sooner)")
	fl.BoolVar(&f.buffered, "buffered", false, "do not use O_DIRECT on block devices (for a misbehaving reader; verification still drops cached pages)")
	fl.Int64Var(&f.size, "size", 0, "decompressed image size in bytes, for a compressed image whose size cannot be found (no .bmap)")
	fl.StringVar(&f.tmp, "temp-dir", "", "where registry images (and, with --watch, downloads) are kept while flashing")
	fl.StringVar(&f.csv, "identity-csv", "", "batch file of identities, one row per card (columns robot_id, hostname, enroll_token, cert, key, ca)")
	fl.BoolVar(&f.reissueFailed, "reissue-failed", false, "with --identity-csv: hand out again rows whose cards failed before (only for cards since wiped)")
	fl.StringVar(&f.control, "identity-control", "", "control's API URL: mint a robot id and enrollment token per card")
	fl.StringVar(&f.prefix, "robot-prefix", "", "with --identity-control: robot ids are PREFIX-<random> (default: the profile name)")
	fl.StringVar(&f.fleetCA, "fleet-ca", "", "with --identity-csv: fleet CA certificate (PEM) written to rows without a ca column")
	f.rf.register(c)
	c.MarkFlagsMutuallyExclusive("identity-csv", "identity-control")
	return c
}

func runFlash(cmd *cobra.Command, f flashFlags, targets []string, lookupEnv func(string) (string, bool)) error {
	if f.image == "" {
		return fmt.Errorf("--image is required: the image to write (raw, .xz, .zst, .gz, URL or OCI reference)")
	}
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("--output %q: use table or json", f.output)
	}
	if f.watch && len(targets) > 0 {
		return fmt.Errorf("--watch flashes the cards inserted from now on: give no targets (got %s)", strings.Join(targets, " "))
	}
	if !f.watch && len(targets) == 0 {
		return fmt.Errorf("no targets: name the disks (/dev/sdb …) or image files to write, or use --watch")
	}
	maxSize, err := parseSize(f.maxSize)
	if err != nil {
		return fmt.Errorf("--max-size: %w", err)
	}
	ctx, stop := signal.NotifyContext(cmdContext(cmd), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var prof *profiles.Profile
	if f.profile != "" {
		if prof, err = profiles.Load(f.profile); err != nil {
			return err
		}
	}
	ids, err := openIdentities(ctx, f, prof, lookupEnv)
	if err != nil {
		return err
	}
	if ids != nil {
		defer ids.Close()
	}
	f.rf.tmp = f.tmp
	ro, err := f.rf.options(cmd, lookupEnv)
	if err != nil {
		return err
	}
	srcOpts := source.Options{Size: f.size, TempDir: f.tmp, Registry: ro}

	stderr := cmd.ErrOrStderr()
	var rep progress.Reporter
	if file, ok := stderr.(*os.File); ok && f.output == "table" && term.IsTerminal(int(file.Fd())) && termWidth(file) >= 60 {
		rep = progress.NewBars(stderr, 0)
	} else {
		// Not a terminal, or one that reports no size (mpb would draw
		// nothing): plain lines.
		rep = progress.NewLines(stderr, 2*time.Second, nil)
	}
	job := bench.Job{
		Policy:      device.Policy{Force: f.force, MaxSize: maxSize},
		Identities:  ids,
		Flash:       flash.Options{NoVerify: f.noVerify},
		Reporter:    rep,
		DirectFiles: true,
		Buffered:    f.buffered,
	}
	if !f.yes {
		job.Confirm = confirmer(cmd)
	}

	if f.watch {
		return watchFlash(ctx, cmd, f, job, srcOpts)
	}
	src, err := source.Open(ctx, f.image, srcOpts)
	if err != nil {
		return err
	}
	defer src.Close()
	if job.Source, err = checkSource(stderr, src, f.force); err != nil {
		return err
	}
	job.Targets = targets
	outs, err := bench.Run(ctx, job)
	rep.Close()
	if err != nil {
		return err
	}
	if err := printOutcomes(cmd.OutOrStdout(), f, outs); err != nil {
		return err
	}
	failed := 0
	for _, o := range outs {
		if o.Err != nil {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d targets failed", failed, len(outs))
	}
	return nil
}

// watchFlash runs until interrupted, flashing each inserted card; the
// image is fetched once (a stream cannot be read once per card).
func watchFlash(ctx context.Context, cmd *cobra.Command, f flashFlags, job bench.Job, srcOpts source.Options) error {
	if job.Confirm != nil {
		// One confirmation for the session: what will happen to every card.
		fmt.Fprintf(cmd.ErrOrStderr(), "Every removable disk inserted from now on will be overwritten with %s (disks over %s refused).\n", f.image, f.maxSize)
		if err := askYes(cmd, "Start the bench?"); err != nil {
			return err
		}
		job.Confirm = nil
	}
	local, cleanup, err := stageImage(ctx, f.image, srcOpts)
	if err != nil {
		return err
	}
	defer cleanup()
	staged, err := flash.OpenImage(local)
	if err != nil {
		return err
	}
	_, err = checkSource(cmd.ErrOrStderr(), staged, f.force)
	staged.Close()
	if err != nil {
		return err
	}
	open := func() (flash.Source, func(), error) {
		s, err := flash.OpenImage(local)
		if err != nil {
			return nil, nil, err
		}
		return s, func() { s.Close() }, nil
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "watching for cards (Ctrl-C to stop)…\n")
	var failed, done int
	err = bench.Watch(ctx, job, open, f.interval, func(o bench.Outcome) {
		done++
		if o.Err != nil {
			failed++
		}
		printOutcomes(cmd.OutOrStdout(), f, []bench.Outcome{o})
	})
	job.Reporter.Close()
	fmt.Fprintf(cmd.ErrOrStderr(), "%d cards flashed, %d failed\n", done-failed, failed)
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d cards failed", failed, done)
	}
	return nil
}

// checkSource says what src is and refuses a source that is not a disk
// image (no MBR or GPT: a wrong file, a single filesystem, a compressed
// file taken for raw) unless force. The source it returns must be used
// instead of src, which may be a stream that has moved past its start.
func checkSource(w io.Writer, src source.Source, force bool) (source.Source, error) {
	checked, table, err := source.ReadTable(src)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "source: %s\n", table)
	if table.Scheme == "" && !force {
		return nil, fmt.Errorf("%s is not a disk image: it has no partition table (%s); flash an image made by `provision image build` or a Raspberry Pi OS .img, or pass --force to write these bytes anyway", src.Name(), table.Problem)
	}
	return checked, nil
}

// stageImage makes ref a local raw image file (with its block map) that can
// be opened once per card: raw files are used as they are, anything else is
// read once into a sparse file under srcOpts.TempDir.
func stageImage(ctx context.Context, ref string, srcOpts source.Options) (string, func(), error) {
	if k, err := source.Classify(ref); err != nil {
		return "", nil, err
	} else if k == source.KindFile {
		return ref, func() {}, nil
	}
	src, err := source.Open(ctx, ref, srcOpts)
	if err != nil {
		return "", nil, err
	}
	defer src.Close()
	out, err := os.CreateTemp(srcOpts.TempDir, "lekiwi-flash-*.img")
	if err != nil {
		return "", nil, fmt.Errorf("temporary file for the image: %w", err)
	}
	name := out.Name()
	cleanup := func() { os.Remove(name); os.Remove(name + ".bmap") }
	if _, err := sparse.Copy(ctx, out, io.NewSectionReader(src, 0, src.Size())); err != nil {
		out.Close()
		cleanup()
		return "", nil, fmt.Errorf("fetch %s: %w", ref, err)
	}
	if err := out.Close(); err != nil {
		cleanup()
		return "", nil, err
	}
	if m := src.BlockMap(); m != nil {
		bf, err := os.Create(name + ".bmap")
		if err == nil {
			err = m.WriteXML(bf)
			if cerr := bf.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			cleanup()
			return "", nil, fmt.Errorf("write the block map of %s: %w", ref, err)
		}
	}
	return name, cleanup, nil
}

func openIdentities(ctx context.Context, f flashFlags, prof *profiles.Profile, lookupEnv func(string) (string, bool)) (identity.Source, error) {
	switch {
	case f.csv != "":
		var ca []byte
		if f.fleetCA != "" {
			b, err := os.ReadFile(f.fleetCA)
			if err != nil {
				return nil, fmt.Errorf("--fleet-ca: %w", err)
			}
			ca = b
		}
		return identity.OpenCSV(f.csv, identity.CSVOptions{CAPEM: ca, Profile: prof, ReissueFailed: f.reissueFailed})
	case f.control != "":
		token := f.rf.token
		if f.rf.tokenFile != "" {
			t, err := readSecret(f.rf.tokenFile, "--token-file")
			if err != nil {
				return nil, err
			}
			token = t
		}
		if token == "" {
			token, _ = lookupEnv("LEKIWI_TOKEN")
		}
		if token == "" {
			return nil, fmt.Errorf("--identity-control needs an engineer's API token: --token-file, LEKIWI_TOKEN or --token")
		}
		o := identity.ControlOptions{URL: f.control, Token: token, Prefix: f.prefix, Profile: prof}
		if f.rf.caFile != "" {
			b, err := os.ReadFile(f.rf.caFile)
			if err != nil {
				return nil, fmt.Errorf("--ca-file: %w", err)
			}
			pool, err := identity.CertPool(b)
			if err != nil {
				return nil, fmt.Errorf("--ca-file %s: %w", f.rf.caFile, err)
			}
			o.RootCAs = pool
		}
		return identity.NewControl(ctx, o)
	}
	return nil, nil
}

// confirmer shows the devices and asks the technician to type yes.
func confirmer(cmd *cobra.Command) func([]device.Info) error {
	return func(devs []device.Info) error {
		w := cmd.ErrOrStderr()
		fmt.Fprintf(w, "These disks will be OVERWRITTEN:\n")
		for _, d := range devs {
			fmt.Fprintf(w, "  %s\n", d)
		}
		return askYes(cmd, fmt.Sprintf("Overwrite %d disk(s)?", len(devs)))
	}
}

func askYes(cmd *cobra.Command, question string) error {
	in := cmd.InOrStdin()
	if file, ok := in.(*os.File); ok && !term.IsTerminal(int(file.Fd())) {
		return fmt.Errorf("%w: stdin is not a terminal, so nobody can confirm; pass --yes", bench.ErrDeclined)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s Type yes to go on: ", question)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if strings.TrimSpace(strings.ToLower(line)) != "yes" {
		return bench.ErrDeclined
	}
	return nil
}

func printOutcomes(w io.Writer, f flashFlags, outs []bench.Outcome) error {
	if f.output == "json" {
		type row struct {
			Target       string  `json:"target"`
			OK           bool    `json:"ok"`
			Phase        string  `json:"phase"`
			BytesWritten int64   `json:"bytes_written"`
			Seconds      float64 `json:"seconds"`
			Verified     bool    `json:"verified"`
			Direct       bool    `json:"direct_io"`
			RobotID      string  `json:"robot_id,omitempty"`
			Model        string  `json:"model,omitempty"`
			Serial       string  `json:"serial,omitempty"`
			Size         int64   `json:"device_size,omitempty"`
			Error        string  `json:"error,omitempty"`
		}
		rows := make([]row, 0, len(outs))
		for _, o := range outs {
			r := row{Target: o.Target, OK: o.Err == nil, Phase: string(o.Phase), BytesWritten: o.BytesWritten,
				Seconds: o.Duration.Seconds(), Verified: o.Err == nil && !f.noVerify, Direct: o.Direct, RobotID: o.RobotID}
			if o.Device != nil {
				r.Model, r.Serial, r.Size = o.Device.Model, o.Device.Serial, o.Device.Size
			}
			if o.Err != nil {
				r.Error = o.Err.Error()
			}
			rows = append(rows, r)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tRESULT\tROBOT\tWRITTEN\tTIME\tDETAIL")
	for _, o := range outs {
		res, detail := "ok", ""
		switch {
		case o.Err != nil:
			res, detail = "FAILED in "+string(o.Phase), o.Err.Error()
		case f.noVerify:
			detail = "not verified (--no-verify)"
		case !o.Direct:
			detail = "verified (buffered I/O: cached pages dropped before reading back)"
		default:
			detail = "verified (O_DIRECT read-back)"
		}
		robot := o.RobotID
		if robot == "" {
			robot = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d MiB\t%s\t%s\n", o.Target, res, robot, o.BytesWritten>>20, o.Duration.Round(time.Millisecond), detail)
	}
	return tw.Flush()
}

// parseSize reads 512GB, 1TB, 64GiB or a number of bytes; 0 means no limit.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(strings.ToUpper(s))
	units := []struct {
		suffix string
		mult   int64
	}{{"TIB", 1 << 40}, {"GIB", 1 << 30}, {"MIB", 1 << 20}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a size such as 256GB or 1TB", s)
	}
	return int64(v * float64(mult)), nil
}

func termWidth(f *os.File) int {
	w, _, err := term.GetSize(int(f.Fd()))
	if err != nil {
		return 0
	}
	return w
}
