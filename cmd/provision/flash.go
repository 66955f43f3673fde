package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/image/sparse"
	"github.com/lekiwi/heartbeat/provision/flash"
)

func newFlash() *cobra.Command {
	var (
		image, output, tmp string
		noVerify           bool
	)
	c := &cobra.Command{
		Use:   "flash --image SRC TARGET...",
		Short: "Write one image to many targets at once: sparse, verified, partition table last",
		Long: `Flash reads the image once and writes it to every TARGET in parallel. Only
mapped data is written (from SRC.bmap when it exists, otherwise all-zero blocks
are skipped, which is right for fresh targets only); the partition table is
written last, so a card pulled out half way never looks valid; every target is
read back and compared with the source's hashes unless --no-verify. A failing
or slow target fails alone; the others finish. The exit status is 0 only when
every target succeeded.

SRC may be a raw image or one compressed with xz, zstd or gzip (.xz, .zst,
.gz: decompressed once into --temp-dir). Targets are image files for now;
block devices (with their safety checks), URLs, OCI references and per-card
identities come next.`,
		Example: `  provision flash --image lekiwi-1.4.0.img card1.img card2.img card3.img card4.img
  provision flash --image lekiwi-1.4.0.img.zst --output json out/*.img | jq '.[] | select(.error)'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, targets []string) error {
			if image == "" {
				return fmt.Errorf("--image is required: the image to write (raw, .xz, .zst or .gz)")
			}
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: use table or json", output)
			}
			ctx := cmd.Context()
			src, cleanup, err := openFlashSource(image, tmp)
			if err != nil {
				return err
			}
			defer cleanup()
			var ts []flash.Target
			var setup []flash.Result
			for _, p := range targets {
				t, err := flash.OpenFileTarget(p, src.Size())
				if err != nil {
					setup = append(setup, flash.Result{Target: p, Err: err, Phase: flash.PhasePrepare})
					continue
				}
				defer t.Close()
				ts = append(ts, t)
			}
			var mu sync.Mutex
			last := map[string]time.Time{}
			progress := func(target string, phase flash.Phase, done, total int64) {
				mu.Lock()
				defer mu.Unlock()
				if output != "table" || time.Since(last[target]) < 2*time.Second && phase != flash.PhaseDone {
					return
				}
				last[target] = time.Now()
				pct := 0.0
				if total > 0 {
					pct = 100 * float64(done) / float64(total)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s %5.1f%% (%d of %d MiB)\n", target, phase, pct, done>>20, total>>20)
			}
			results := append(setup, flash.Flash(ctx, src, ts, flash.Options{NoVerify: noVerify, Progress: progress})...)
			failed := 0
			for _, r := range results {
				if r.Err != nil {
					failed++
				}
			}
			if output == "json" {
				type row struct {
					Target       string  `json:"target"`
					OK           bool    `json:"ok"`
					Phase        string  `json:"phase"`
					BytesWritten int64   `json:"bytes_written"`
					Seconds      float64 `json:"seconds"`
					Error        string  `json:"error,omitempty"`
				}
				rows := make([]row, 0, len(results))
				for _, r := range results {
					rw := row{Target: r.Target, OK: r.Err == nil, Phase: string(r.Phase), BytesWritten: r.BytesWritten, Seconds: r.Duration.Seconds()}
					if r.Err != nil {
						rw.Error = r.Err.Error()
					}
					rows = append(rows, rw)
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(rows); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TARGET\tRESULT\tWRITTEN\tTIME\tDETAIL")
				for _, r := range results {
					res, detail := "ok", ""
					if r.Err != nil {
						res, detail = "FAILED in "+string(r.Phase), r.Err.Error()
					} else if noVerify {
						detail = "not verified (--no-verify)"
					}
					fmt.Fprintf(tw, "%s\t%s\t%d MiB\t%s\t%s\n", r.Target, res, r.BytesWritten>>20, r.Duration.Round(time.Millisecond), detail)
				}
				tw.Flush()
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d targets failed", failed, len(results))
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&image, "image", "", "image to write: raw, or compressed .xz, .zst, .gz")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	f.BoolVar(&noVerify, "no-verify", false, "skip reading the targets back (not recommended)")
	f.StringVar(&tmp, "temp-dir", "", "where a compressed image is decompressed (default: system temp)")
	return c
}

// openFlashSource opens a raw image, or decompresses a compressed one
// into a sparse temporary file first.
func openFlashSource(path, tmp string) (*flash.ImageFile, func(), error) {
	ext := filepath.Ext(path)
	if ext != ".zst" && ext != ".xz" && ext != ".gz" {
		src, err := flash.OpenImage(path)
		return src, func() {}, err
	}
	in, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open the image: %w", err)
	}
	defer in.Close()
	r, closeDec, err := sparse.Decompress(in, ext)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	defer closeDec()
	out, err := os.CreateTemp(tmp, "lekiwi-flash-*.img")
	if err != nil {
		return nil, nil, fmt.Errorf("temporary file for the decompressed image: %w", err)
	}
	name := out.Name()
	cleanup := func() { os.Remove(name) }
	if _, err := sparse.Copy(context.Background(), out, r); err != nil {
		out.Close()
		cleanup()
		return nil, nil, fmt.Errorf("decompress %s: %w (truncated or corrupt download?)", path, err)
	}
	if err := out.Close(); err != nil {
		cleanup()
		return nil, nil, err
	}
	// A sidecar next to the compressed file describes the raw image.
	if side := strings.TrimSuffix(path, filepath.Ext(path)) + ".bmap"; fileExists(side) {
		if b, err := os.ReadFile(side); err == nil {
			os.WriteFile(name+".bmap", b, 0o600)
		}
	}
	src, err := flash.OpenImage(name)
	if err != nil {
		os.Remove(name + ".bmap")
		cleanup()
		return nil, nil, err
	}
	return src, func() { os.Remove(name + ".bmap"); cleanup() }, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
