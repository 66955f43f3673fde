// Package demo is `make run` (cmd/fleet demo): one control node in this
// process and a simulated fleet (robotsim) for a person to watch through
// the API, with a live online count until the context ends. It measures
// and asserts nothing.
package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/lekiwi/heartbeat/control/store"
	"github.com/lekiwi/heartbeat/protocol"
	"github.com/lekiwi/heartbeat/testbench/lab"
	"github.com/lekiwi/heartbeat/testbench/robotsim"
)

// Options configure `fleet demo` (what `make run` starts).
type Options struct {
	Robots            int
	DataDir           string // control's dqlite data; robots' state goes beside it
	Listen, DBAddress string
	HeartbeatInterval time.Duration
	Out               io.Writer // status lines
	Logger            *slog.Logger
}

// Run starts one control node and a simulated fleet, prints the API URL
// and a live online count until ctx ends, then stops both cleanly.
func Run(ctx context.Context, o Options) error {
	if o.Robots <= 0 {
		return fmt.Errorf("demo: --robots must be positive, got %d", o.Robots)
	}
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	ctl, err := lab.StartControl(startCtx, lab.ControlOptions{
		Dir: o.DataDir, Listen: o.Listen, DBAddress: o.DBAddress,
		HeartbeatInterval: o.HeartbeatInterval, OfflineGrace: o.HeartbeatInterval, Logger: o.Logger,
	})
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := ctl.Close(cctx); err != nil {
			fmt.Fprintf(o.Out, "control node stopped with an error: %v\n", err)
		}
	}()
	url := ctl.URL()
	api, err := lab.NewAPIClient(ctx, ctl, "admin")
	if err != nil {
		return err
	}
	caFile := filepath.Join(filepath.Dir(o.DataDir), "ca", "ca.crt")
	fmt.Fprintf(o.Out, "control node up: %s (mTLS for robots, fleet CA %s)\n", url, caFile)
	fmt.Fprintf(o.Out, "admin token for this run: %s\n", api.Token)
	fmt.Fprintf(o.Out, "try: curl --cacert %s -H 'Authorization: Bearer %s' %s/v1/robots?state=online\n", caFile, api.Token, url)
	fmt.Fprintf(o.Out, "dashboard: %s/ (trust %s, or accept the warning; log in with the admin token)\n", url, caFile)
	fmt.Fprintf(o.Out, "data: %s · heartbeat every %s · admin socket %s\n", o.DataDir, o.HeartbeatInterval, ctl.AdminSocket())

	fleet, err := robotsim.NewFleet(robotsim.FleetOptions{
		Robots: o.Robots, Servers: []string{url}, Dir: filepath.Join(filepath.Dir(o.DataDir), "robots"), CA: ctl.CA(),
		TelemetrySampleInterval: 2 * time.Second, TelemetryMinInterval: 10 * time.Second, Logger: o.Logger,
	})
	if err != nil {
		return err
	}
	if err := fleet.Start(ctx, time.Second); err != nil {
		return err
	}
	defer func() {
		if err := fleet.Stop(); err != nil {
			fmt.Fprintf(o.Out, "stopping robots: %v\n", err)
		}
	}()

	interactive := isTerminal(o.Out)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			fmt.Fprintln(o.Out, "\nstopping: robots first, then the control node")
			return nil
		case <-tick.C:
		}
		// Some life in the event log: an operator takes or releases a robot.
		if i%3 == 0 {
			r := fleet.Robots()[rng.IntN(len(fleet.Robots()))]
			kind := protocol.EventTeleopStarted
			if rng.IntN(2) == 0 {
				kind = protocol.EventTeleopStopped
			}
			data, _ := json.Marshal(protocol.TeleopData{Operator: "demo"})
			_ = r.Emit(ctx, protocol.Event{Kind: kind, Data: data})
		}
		online, err1 := ctl.Store().CountRobots(ctx, store.StateOnline)
		last, err2 := ctl.Store().LastSeq(ctx)
		if err1 != nil || err2 != nil {
			continue
		}
		line := fmt.Sprintf("online %d/%d robots · connected here %d · events in log %d", online, o.Robots, ctl.Gateway().Connected(), last)
		switch {
		case interactive:
			fmt.Fprintf(o.Out, "\r%-80s", line)
		case i%10 == 0:
			fmt.Fprintln(o.Out, line)
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
