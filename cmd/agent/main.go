// Command agent is the Lekiwi Heartbeat robot agent: `agent run` is the
// daemon systemd starts on every robot; `agent systemd-unit` prints its unit
// file; `agent version` prints the build; `agent factory probe` reports the
// board and its servo buses in the provisioning environment, and
// `agent factory run` provisions it. Started as PID 1 under the name init
// (an initramfs's /init), it is the initramfs's init (agent/pid1), and so
// is `agent init` for tests. All logic lives in agent/...; this is flags
// around it.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lekiwi/heartbeat/internal/version"
	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/agent/config"
	"github.com/lekiwi/heartbeat/agent/daemon"
	"github.com/lekiwi/heartbeat/agent/pid1"
	"github.com/lekiwi/heartbeat/agent/systemd"
)

func main() {
	// The kernel starts /init with its own arguments for init, which are
	// not subcommands: PID 1 goes straight to its work and never returns.
	if pid1.IsInit(os.Args[0], os.Getpid()) {
		pid1.Main(os.Args[1:])
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot(os.Stdout, os.Stderr, os.LookupEnv)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

func newRoot(stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) *cobra.Command {
	root := &cobra.Command{
		Use:   "agent",
		Short: "Lekiwi Heartbeat robot agent",
		Long: `The robot agent keeps a Raspberry Pi robot (LeKiwi or XLE) in touch with its
control servers: hello, heartbeats, telemetry on change, durable events,
answers to commands. Messages control has not acknowledged are kept on disk
and resent after a reconnect or a reboot.

The same binary provisions a board in the factory (agent factory) and is
the init of the provisioning initramfs and of a disk boot that needs
modules: started as PID 1 under the name init (/init links to it), it
mounts, loads modules and provisions or boots the disk (agent init --help).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newRunCmd(lookupEnv), newUnitCmd(), newVersionCmd(), newFactoryCmd(), newInitCmd())
	return root
}

func newRunCmd(lookupEnv func(string) (string, bool)) *cobra.Command {
	var (
		file, robotID, robotType, stateDir, logLevel string
		caFile, token, tokenFile                     string
		servers                                      []string
		heartbeat                                    time.Duration
		insecure                                     bool
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
Identity and TLS. A robot talks to control over wss:// (or https://) only,
authenticated by its own certificate (mutual TLS, TLS 1.3). The certificate,
its private key and the fleet CA live in <state_dir>/identity/ (key.pem and
cert.pem mode 0600, ca.pem). The key is generated on the robot and never
leaves it.
  * First start, no identity yet: the agent enrolls. It reads the single-use
    token (enrollment_token_file, or enrollment_token), trusts only the fleet
    CA in ca_file (default ` + config.DefaultCAFile + `), sends control a
    certificate request with the token, saves what comes back, deletes the
    token file and connects. Network errors are retried with backoff; a
    token control refuses (token_used, token_expired, token_invalid) stops
    the agent with the reason — create a new token on a control node with
    control enroll create --robot-id <id> and restart.
  * Every later start loads the identity; no token is needed.
  * Renewal is automatic: two thirds into the certificate's lifetime the
    agent asks control for a new one over its live connection (new key,
    same robot id); the next connection presents it.
  * --insecure (insecure: true) is for development against a plain control:
    ws:// and http:// servers are accepted, no TLS and no identity are used,
    and the agent logs a warning. Without it, ws:// servers are refused.

Logs are JSON on stderr (journald). Under systemd the agent reports READY=1
once its queue is open and pings the watchdog while its loop is alive.`,
		Example: `  # A robot configured by file (the image ships /etc/lekiwi/ca.pem; the
  # provisioning step writes the token file next to the agent's state, where
  # the agent may delete it once enrolled — /etc is read-only to the unit):
  cat /etc/lekiwi/agent.yml
    robot_id: lekiwi-0042
    robot_type: lekiwi
    servers: [wss://control-a.lan:8443, wss://control-b.lan:8443]
    ca_file: /etc/lekiwi/ca.pem
    enrollment_token_file: /var/lib/lekiwi/agent/enrollment-token
  agent run

  # Enroll by hand: make a token on a control node, hand it to the robot:
  control enroll create --robot-id lekiwi-0042      # prints lke_...
  echo lke_... > /var/lib/lekiwi/agent/enrollment-token
  agent run --robot-id lekiwi-0042 --robot-type lekiwi \
    --server wss://control-a.lan:8443 --ca-file /etc/lekiwi/ca.pem \
    --enrollment-token-file /var/lib/lekiwi/agent/enrollment-token

  # Everything on the command line, two control nodes, debug logs:
  agent run --robot-id lekiwi-0042 --robot-type lekiwi \
    --server wss://10.0.0.5:8443 --server wss://10.0.0.6:8443 --log-level debug

  # Try it on a laptop against a local control without TLS, state in /tmp:
  LEKIWI_AGENT_SERVERS=http://127.0.0.1:8080 agent run --robot-id dev-1 \
    --robot-type xle --state-dir /tmp/agent-state --insecure`,
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
			if f.Changed("ca-file") {
				flags.CAFile = &caFile
			}
			if f.Changed("enrollment-token") {
				flags.EnrollmentToken = &token
			}
			if f.Changed("enrollment-token-file") {
				flags.EnrollmentTokenFile = &tokenFile
			}
			if f.Changed("insecure") {
				flags.Insecure = &insecure
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
			return daemon.Run(cmd.Context(), cfg, version.String(), log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "config", "", "YAML config file (default "+config.DefaultFile+" if it exists)")
	f.StringVar(&robotID, "robot-id", "", "robot id, a DNS label like lekiwi-0042")
	f.StringVar(&robotType, "robot-type", "", "robot type: lekiwi or xle")
	f.StringArrayVar(&servers, "server", nil, "control base URL (ws, wss, http, https); repeat for several; replaces the file's list")
	f.StringVar(&stateDir, "state-dir", "", "directory for the on-disk queue and identity/ (default "+config.DefaultStateDir+")")
	f.DurationVar(&heartbeat, "heartbeat-interval", 0, "heartbeat interval until control sets one (default 30s)")
	f.StringVar(&logLevel, "log-level", "", "debug, info, warn or error (default info)")
	f.StringVar(&caFile, "ca-file", "", "fleet CA (PEM) trusted when enrolling (default "+config.DefaultCAFile+")")
	f.StringVar(&tokenFile, "enrollment-token-file", "", "file with the single-use enrollment token; deleted after enrolling")
	f.StringVar(&token, "enrollment-token", "", "the enrollment token itself (visible in ps: prefer --enrollment-token-file)")
	f.BoolVar(&insecure, "insecure", false, "development only: allow ws:// and http:// servers, no TLS, no robot identity")
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
			_, err := fmt.Fprintln(cmd.OutOrStdout(), version.String())
			return err
		},
	}
}
