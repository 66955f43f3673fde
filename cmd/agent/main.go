// Command agent is the Lekiwi Heartbeat robot agent: `agent run` is the
// daemon systemd starts on every robot; `agent systemd-unit` prints its unit
// file; `agent version` prints the build. All logic lives in agent/...;
// this is flags around it.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/agent/config"
	"github.com/lekiwi/heartbeat/agent/daemon"
	"github.com/lekiwi/heartbeat/agent/systemd"
)

// version is set at link time: -ldflags "-X main.version=1.4.0". Unset, the
// module version from the build info (or "dev") is used.
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot(os.Stdout, os.Stderr, os.LookupEnv)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func newRoot(stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) *cobra.Command {
	root := &cobra.Command{
		Use:   "agent",
		Short: "Lekiwi Heartbeat robot agent",
		Long: `The robot agent keeps a Raspberry Pi robot (LeKiwi or XLE) in touch with its
control servers: hello, heartbeats, telemetry on change, durable events,
answers to commands. Messages control has not acknowledged are kept on disk
and resent after a reconnect or a reboot.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newRunCmd(lookupEnv), newUnitCmd(), newVersionCmd())
	return root
}

func newRunCmd(lookupEnv func(string) (string, bool)) *cobra.Command {
	var (
		file, robotID, robotType, stateDir, logLevel string
		servers                                      []string
		heartbeat                                    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent daemon (what systemd starts)",
		Long: `Run the agent until SIGINT or SIGTERM.

Settings come from, in increasing precedence: the YAML file
(` + config.DefaultFile + `, optional; --config or LEKIWI_AGENT_CONFIG make
it required), LEKIWI_AGENT_* environment variables, then flags.

Environment variable, YAML key (durations like 30s, 5m), meaning:
` + envHelp() + `
Logs are JSON on stderr (journald). Under systemd the agent reports READY=1
once its queue is open and pings the watchdog while its loop is alive.`,
		Example: `  # A robot configured by file:
  cat /etc/lekiwi/agent.yml
    robot_id: lekiwi-0042
    robot_type: lekiwi
    servers: [wss://control-a.lan:8443, wss://control-b.lan:8443]
  agent run

  # Everything on the command line, two control nodes, debug logs:
  agent run --robot-id lekiwi-0042 --robot-type lekiwi \
    --server ws://10.0.0.5:8080 --server ws://10.0.0.6:8080 --log-level debug

  # Try it on a laptop against a local control, state in /tmp:
  LEKIWI_AGENT_SERVERS=http://127.0.0.1:8080 agent run --robot-id dev-1 \
    --robot-type xle --state-dir /tmp/agent-state`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			var flags config.Flags
			if f.Changed("robot-id") {
				flags.RobotID = &robotID
			}
			if f.Changed("robot-type") {
				flags.RobotType = &robotType
			}
			if f.Changed("server") {
				flags.Servers = servers
			}
			if f.Changed("state-dir") {
				flags.StateDir = &stateDir
			}
			if f.Changed("heartbeat-interval") {
				flags.HeartbeatInterval = &heartbeat
			}
			if f.Changed("log-level") {
				flags.LogLevel = &logLevel
			}
			cfg, err := config.Load(config.Sources{File: file, LookupEnv: lookupEnv, Flags: flags})
			if err != nil {
				return err
			}
			level, err := config.ParseLogLevel(cfg.LogLevel)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			return daemon.Run(cmd.Context(), cfg, buildVersion(), log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "config", "", "YAML config file (default "+config.DefaultFile+" if it exists)")
	f.StringVar(&robotID, "robot-id", "", "robot id, a DNS label like lekiwi-0042")
	f.StringVar(&robotType, "robot-type", "", "robot type: lekiwi or xle")
	f.StringArrayVar(&servers, "server", nil, "control base URL (ws, wss, http, https); repeat for several; replaces the file's list")
	f.StringVar(&stateDir, "state-dir", "", "directory for the on-disk queue (default "+config.DefaultStateDir+")")
	f.DurationVar(&heartbeat, "heartbeat-interval", 0, "heartbeat interval until control sets one (default 30s)")
	f.StringVar(&logLevel, "log-level", "", "debug, info, warn or error (default info)")
	return cmd
}

func envHelp() string {
	var b strings.Builder
	for _, ev := range config.EnvVars() {
		key := ev.Key
		if key == "" {
			key = "-"
		}
		fmt.Fprintf(&b, "  %-39s %-26s %s\n", ev.Name, key, ev.Help)
	}
	return b.String()
}

func newUnitCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "systemd-unit",
		Short: "Print the systemd unit file",
		Example: `  agent systemd-unit > /etc/systemd/system/` + systemd.UnitName + `
  systemctl daemon-reload && systemctl enable --now lekiwi-agent`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := io.WriteString(cmd.OutOrStdout(), systemd.Unit())
			return err
		},
	}
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the agent version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), buildVersion())
			return err
		},
	}
}
