package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/control/node"
	"github.com/lekiwi/heartbeat/control/store"
)

func newBackup(f *adminFlags) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a consistent backup of the fleet's state (the event log) to FILE",
		Long: `Back up the control database through the local node's admin socket. The event
log is the source of truth, so the backup is the whole log, read in one read
transaction: a consistent snapshot taken while robots keep writing. It is JSON
lines — a header, one event per line, an end line with a SHA-256 of the rest —
checked as it arrives and written atomically (a temporary file renamed into
place), so FILE is either a complete, verified backup or absent.

Restore it into a new, empty data directory with ` + "`control restore`" + `.`,
		Example: `  control backup /var/backups/lekiwi/heartbeat-$(date +%F).ndjson
  control backup ./snapshot.ndjson --data-dir ./data`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBackup(cmd, f, args[0], force)
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&force, "force", false, "replace FILE if it exists")
	return cmd
}

func runBackup(cmd *cobra.Command, f *adminFlags, path string, force bool) error {
	if _, err := os.Stat(path); err == nil && !force {
		return fmt.Errorf("%s exists; choose another file or pass --force to replace it", path)
	}
	socket := adminSocketPath(f)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		// The body may take long; only the answer's start is bounded.
		ResponseHeaderTimeout: time.Minute,
	}}
	req, err := http.NewRequestWithContext(cmd.Context(), "GET", "http://control/v1/admin/backup", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("reach the control node's admin socket %s: %w (is `control run` up on this host, with this --data-dir or --admin-socket?)", socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var eb protocol.ErrorBody
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(body, &eb) == nil && eb.Error.Code != "" {
			return fmt.Errorf("backup: %s (%s)", eb.Error.Message, eb.Error.Code)
		}
		return fmt.Errorf("backup: %s", resp.Status)
	}

	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".partial-*")
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	start := time.Now()
	prog := newProgress(cmd.ErrOrStderr(), "backup")
	// Every byte goes to the file as it is checked: a cut or damaged
	// stream fails here instead of leaving a bad backup behind.
	hdr, err := store.CheckBackup(io.TeeReader(resp.Body, tmp), prog.report)
	if err != nil {
		return fmt.Errorf("backup not written: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	info, err := tmp.Stat()
	if err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	ok = true
	syncDir(dir)
	fmt.Fprintf(cmd.OutOrStdout(), "%s: %d events (last seq %d, schema %d) from %s, %s, in %s\n",
		path, hdr.Events, hdr.LastSeq, hdr.SchemaVersion, hdr.Node, humanBytes(info.Size()), time.Since(start).Round(time.Millisecond))
	return nil
}

func newRestore() *cobra.Command {
	var dataDir, dbAddress string
	cmd := &cobra.Command{
		Use:   "restore FILE --data-dir NEW --db-address ADDR",
		Short: "Make a new control database from a backup (offline)",
		Long: `Restore a backup written by ` + "`control backup`" + ` into a new, empty data
directory. A fresh single dqlite node starts there on a loopback port (nothing
outside this host can reach it meanwhile), the events are replayed with their
original sequence numbers through the same projection code the live node uses,
the counts and checksum are checked, the robots projection is verified against
a replay of the log, the node is stopped and given its final --db-address.
Nothing is left in --data-dir unless all of that succeeded. FILE - reads
standard input.

Then start the node on that directory with ` + "`control run`" + ` and the SAME
--db-address (a dqlite node remembers its address), with your usual --ca-dir.
The restored node starts a new cluster of one: other nodes join it with wiped
data directories; never start members of the old cluster against it. Robots
reconnect by themselves; presence (last seen) starts empty and fills within
one heartbeat interval.`,
		Example: `  control restore heartbeat-2026-11-27.ndjson --data-dir /var/lib/lekiwi/control.new --db-address 10.0.0.5:9001
  control run --data-dir /var/lib/lekiwi/control.new --db-address 10.0.0.5:9001 --ca-dir /etc/lekiwi/ca`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = os.Stdin
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return fmt.Errorf("restore: %w", err)
				}
				defer f.Close()
				in = f
			}
			start := time.Now()
			prog := newProgress(cmd.ErrOrStderr(), "restore")
			opts := store.Options{Dir: dataDir, Address: dbAddress, Logger: newLogger("warn")}
			rep, err := store.Restore(cmd.Context(), in, store.RestoreOptions{Store: opts, Progress: prog.report})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %d events (last seq %d, backup of %s taken %s) and %d robots into %s in %s\n",
				rep.Events, rep.Header.LastSeq, rep.Header.Node, rep.Header.CreatedAt.Format(time.RFC3339), rep.Robots, dataDir, time.Since(start).Round(time.Millisecond))
			fmt.Fprintf(cmd.OutOrStdout(), "start it with: control run --data-dir %s --db-address %s ...\n", dataDir, dbAddress)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dataDir, "data-dir", "", "new, empty data directory for the restored node (required)")
	fl.StringVar(&dbAddress, "db-address", "", "dqlite address the restored node will run on: the one `control run` gets (required)")
	_ = cmd.MarkFlagRequired("data-dir")
	_ = cmd.MarkFlagRequired("db-address")
	return cmd
}

// adminSocketPath finds the local node's admin socket the way
// adminFlags.client does.
func adminSocketPath(f *adminFlags) string {
	if f.socket != "" {
		return f.socket
	}
	if p := os.Getenv(node.EnvPrefix + "ADMIN_SOCKET"); p != "" {
		return p
	}
	return filepath.Join(f.dataDir, "control.sock")
}

// progress prints a line on stderr every few seconds of a long run.
type progress struct {
	w     io.Writer
	what  string
	start time.Time
	last  time.Time
}

func newProgress(w io.Writer, what string) *progress {
	now := time.Now()
	return &progress{w: w, what: what, start: now, last: now}
}

func (p *progress) report(b store.BackupProgress) {
	now := time.Now()
	if now.Sub(p.last) < 2*time.Second {
		return
	}
	p.last = now
	pct := ""
	if b.Total > 0 {
		pct = fmt.Sprintf(" (%.0f%%)", 100*float64(b.Events)/float64(b.Total))
	}
	fmt.Fprintf(p.w, "%s: %d/%d events%s, %s, %s\n", p.what, b.Events, b.Total, pct, humanBytes(b.Bytes), now.Sub(p.start).Round(time.Second))
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
