package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/netboot/station"
)

func newStatus() *cobra.Command {
	var stationURL, format string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the boards a running station knows about",
		Long: `Show every board a running station knows about: its step (seen, boot,
probe, match, identity, install, verify, reboot, online), status and, when
held or waiting, the reason — what a technician should do about it.`,
		Example: `  netboot status --station http://10.0.0.5:8080
  netboot status --station http://10.0.0.5:8080 --output json | jq '.boards[] | select(.status=="held")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			rep, raw, err := fetchStatus(ctx, stationURL)
			if err != nil {
				return err
			}
			switch format {
			case "json":
				_, err = cmd.OutOrStdout().Write(raw)
				return err
			case "table":
				return printStatus(cmd.OutOrStdout(), rep)
			}
			return fmt.Errorf("--output %q: want table or json", format)
		},
	}
	cmd.Flags().StringVar(&stationURL, "station", "http://127.0.0.1:8080", "the station's HTTP address")
	cmd.Flags().StringVarP(&format, "output", "o", "table", "table or json")
	return cmd
}

func fetchStatus(ctx context.Context, base string) (station.StatusReport, []byte, error) {
	var rep station.StatusReport
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+station.StatusPath, nil)
	if err != nil {
		return rep, nil, fmt.Errorf("--station %q: %w", base, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return rep, nil, fmt.Errorf("asking the station at %s (is `netboot serve` running, and is --station its --http-addr?): %w", base, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return rep, nil, fmt.Errorf("reading the station's status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return rep, nil, fmt.Errorf("station at %s answered %s: %s", base, resp.Status, strings.TrimSpace(string(raw)))
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		return rep, nil, fmt.Errorf("the station's status is not the expected JSON (a different version?): %w", err)
	}
	return rep, raw, nil
}

func printStatus(w io.Writer, rep station.StatusReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERIAL\tMODEL\tSTEP\tSTATUS\tPROFILE\tROBOT\tLAST SEEN\tREASON")
	for _, b := range rep.Boards {
		progress := ""
		if b.Total > 0 {
			progress = fmt.Sprintf(" %d%%", b.Done*100/b.Total)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s%s\t%s\t%s\t%s\t%s\n", b.Serial, dash(b.Model), b.Step, b.Status, progress,
			dash(b.Profile), dash(b.RobotID), b.LastSeen.Local().Format("15:04:05"), b.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	ev := rep.Events
	fmt.Fprintf(w, "\n%d board(s); %d event(s) queued for control", len(rep.Boards), ev.Pending)
	if !ev.UnreachableSince.IsZero() {
		fmt.Fprintf(w, "; control unreachable since %s: %s", ev.UnreachableSince.Local().Format(time.DateTime), ev.LastError)
	}
	fmt.Fprintln(w)
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
