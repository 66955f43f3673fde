// Command control runs a Lekiwi Heartbeat control node: the robots'
// WebSocket gateway, the REST API and metrics, over a dqlite cluster.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lekiwi/heartbeat/internal/version"
	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/control/node"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "control",
		Short:         "Lekiwi Heartbeat control node: robot gateway, REST API and fleet state",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	af := &adminFlags{}
	for _, c := range []*cobra.Command{newToken(af), newEnroll(af), newRobot(af), newLeave(af), newCluster(af), newDeploy(af),
		newRobots(af), newEvents(af)} {
		af.add(c)
		root.AddCommand(c)
	}
	root.AddCommand(newServe(modeInit), newServe(modeJoin), newServe(modeWitness), newRecover())
	root.AddCommand(newBackup(af), newRestore())
	root.AddCommand(newRun(), &cobra.Command{
		Use:   "version",
		Short: "Print the control version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version.String()) },
	})
	return root
}

// serveMode is what a long-running command starts.
type serveMode int

const (
	modeRun     serveMode = iota // control node, first or joining (--join)
	modeInit                     // control node starting a new cluster
	modeJoin                     // control node joining PEER...
	modeWitness                  // dqlite voter only
)

func newRun() *cobra.Command { return newServe(modeRun) }

func newServe(mode serveMode) *cobra.Command {
	var configPath string
	flagCfg := node.Defaults()
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a control node (the first of a cluster, or one joining it)",
		Long: `Run a control node. State lives in a dqlite cluster: start the first node
alone, then start the others with --join pointing at it. A highly available
cluster needs three voters: two control nodes plus a witness.

Configuration comes from a YAML file (--config), then LEKIWI_CONTROL_*
environment variables (DATA_DIR, LISTEN, DB_ADDRESS, JOIN, NODE_ID,
HEARTBEAT_INTERVAL, OFFLINE_GRACE, LOG_LEVEL, CA_DIR, CA_PASSPHRASE_FILE,
INSECURE, TLS_NAMES, ADMIN_SOCKET, OIDC_ISSUER, OIDC_AUDIENCE, OIDC_ROLE_CLAIM,
DISCOVERY, DISCOVERY_INTERFACES),
then flags.

Robots connect with mTLS (TLS 1.3) using certificates from the fleet CA; the
same HTTPS port serves the API to bearer tokens (` + "`control token create`" + `).
Administration commands on this host talk to the node over its admin socket.`,
		Example: `  # a fleet CA, then a single node with its data in ./data
  provision ca init --dir ./ca
  control run --ca-dir ./ca --data-dir ./data --listen 127.0.0.1:8080 --db-address 127.0.0.1:9001

  # a second node joining the first
  control run --data-dir ./data2 --listen 127.0.0.1:8081 --db-address 127.0.0.1:9002 --join 127.0.0.1:9001

  # robots connect to wss://127.0.0.1:8080/v1/agent; the API lists them
  TOKEN=$(control token create --data-dir ./data --name me --role operator)
  curl --cacert ./ca/ca.crt -H "Authorization: Bearer $TOKEN" https://127.0.0.1:8080/v1/robots`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := node.Defaults()
			if configPath != "" {
				if err := cfg.LoadFile(configPath); err != nil {
					return err
				}
			}
			if err := cfg.LoadEnv(os.Getenv); err != nil {
				return err
			}
			applyFlags(cmd, &cfg, flagCfg)
			switch mode {
			case modeInit:
				if len(cfg.Join) > 0 {
					return fmt.Errorf("init starts a new cluster; to join %v use `control join`", cfg.Join)
				}
			case modeJoin:
				cfg.Join = args
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("invalid configuration:\n%w", err)
			}
			log := newLogger(cfg.LogLevel)
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			if mode == modeWitness {
				w, err := node.StartWitness(startCtx, cfg, node.Options{Logger: log})
				cancel()
				if err != nil {
					return err
				}
				<-ctx.Done()
				return w.Close()
			}
			n, err := node.Start(startCtx, cfg, node.Options{Logger: log})
			cancel()
			if err != nil {
				return err
			}
			select {
			case <-ctx.Done():
			case <-n.Left():
				log.Info("left the cluster")
			}
			log.Info("stopping; robots are told to reconnect elsewhere")
			closeCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			return n.Close(closeCtx)
		},
	}
	switch mode {
	case modeInit:
		cmd.Use, cmd.Short = "init", "Start the first control node of a new cluster"
		cmd.Long = "Start the first control node of a new cluster (same flags as run, no --join).\n\n" + cmd.Long
		cmd.Example = "  control init --ca-dir ./ca --data-dir /var/lib/lekiwi/control --listen 10.0.0.10:8443 --db-address 10.0.0.10:9001"
	case modeJoin:
		cmd.Use, cmd.Short = "join PEER [PEER...]", "Start a control node that joins the cluster of PEER (a member's db address)"
		cmd.Long = "Start a control node joining an existing cluster; PEER is a member's --db-address.\n\n" + cmd.Long
		cmd.Example = "  control join 10.0.0.10:9001 --ca-dir ./ca --data-dir /var/lib/lekiwi/control --listen 10.0.0.11:8443 --db-address 10.0.0.11:9001"
		cmd.Args = cobra.MinimumNArgs(1)
	case modeWitness:
		cmd.Use, cmd.Short = "witness", "Run a dqlite voter only (no API, no gateway): the third vote for two control nodes"
		cmd.Long = `Run a witness: a member of the dqlite cluster that votes and keeps a replica
but serves no robots and no API. Two control nodes plus a witness make the
three voters that survive the loss of any one; two nodes alone hold no replica.
It is small enough to run on the netboot station.`
		cmd.Example = "  control witness --join 10.0.0.10:9001 --ca-dir ./ca --data-dir /var/lib/lekiwi/witness --db-address 10.0.0.20:9001"
	}
	f := cmd.Flags()
	f.StringVarP(&configPath, "config", "c", "", "YAML configuration file")
	f.StringVar(&flagCfg.NodeID, "node-id", "", "name of this node in events (default: its --db-address)")
	f.StringVar(&flagCfg.DataDir, "data-dir", flagCfg.DataDir, "directory for this node's dqlite data")
	f.StringVar(&flagCfg.Listen, "listen", flagCfg.Listen, "HTTP address for robots, the API and /metrics")
	f.StringVar(&flagCfg.DBAddress, "db-address", flagCfg.DBAddress, "host:port for dqlite replication with peers")
	f.StringSliceVar(&flagCfg.Join, "join", nil, "dqlite address of an existing member to join (repeatable)")
	f.DurationVar(&flagCfg.DBNetworkLatency, "db-network-latency", flagCfg.DBNetworkLatency, "one-way latency between members; raft elections start after 15x this (same value on every member)")
	f.IntVar(&flagCfg.DBSnapshotThreshold, "db-snapshot-threshold", flagCfg.DBSnapshotThreshold, "raft entries between database snapshots")
	f.IntVar(&flagCfg.DBSnapshotTrailing, "db-snapshot-trailing", flagCfg.DBSnapshotTrailing, "raft entries kept in memory behind a snapshot for lagging members (memory: each entry holds its transaction's pages)")
	f.DurationVar(&flagCfg.RetentionInterval, "retention-interval", flagCfg.RetentionInterval, "how often the leader compacts telemetry (0 disables; see docs/OPERATIONS.md)")
	f.DurationVar(&flagCfg.HeartbeatInterval, "heartbeat-interval", flagCfg.HeartbeatInterval, "heartbeat interval robots are told to use")
	f.DurationVar(&flagCfg.OfflineGrace, "offline-grace", flagCfg.OfflineGrace, "added to 1.5 heartbeat intervals before a silent robot is offline")
	f.StringVar(&flagCfg.LogLevel, "log-level", flagCfg.LogLevel, "debug, info, warn or error")
	f.StringVar(&flagCfg.CADir, "ca-dir", "", "fleet CA directory from `provision ca init` (required unless --insecure)")
	f.StringVar(&flagCfg.CAPassphraseFile, "ca-passphrase-file", "", "file holding the CA key's passphrase")
	f.BoolVar(&flagCfg.Insecure, "insecure", false, "DEVELOPMENT ONLY: plain HTTP, robots not authenticated")
	f.StringSliceVar(&flagCfg.TLSNames, "tls-name", nil, "extra DNS name or IP for this node's certificate (repeatable)")
	f.StringVar(&flagCfg.AdminSocket, "admin-socket", "", "local admin socket (default <data-dir>/control.sock)")
	f.StringVar(&flagCfg.RegistryDir, "registry-dir", "", `storage of the embedded OCI registry at /v2/ (default <data-dir>/registry; "off" disables it)`)
	f.DurationVar(&flagCfg.RobotCertLifetime, "robot-cert-lifetime", flagCfg.RobotCertLifetime, "validity of robot certificates")
	f.BoolVar(&flagCfg.Discovery, "discovery", flagCfg.Discovery, "browse the LAN over mDNS and record robots on it that are not connected (DeviceDiscovered)")
	f.StringSliceVar(&flagCfg.DiscoveryInterfaces, "discovery-interface", nil, "browse only on this interface (repeatable; default every multicast interface)")
	f.IntVar(&flagCfg.MaxPendingConnections, "max-pending-connections", flagCfg.MaxPendingConnections, "connections in TLS handshake or robot hello at once; a reconnect storm beyond it waits in the kernel's accept queue")
	f.DurationVar(&flagCfg.MaxQueueWait, "max-queue-wait", flagCfg.MaxQueueWait, "while max-pending-connections are in flight, reset connections that waited this long in the accept queue, so their robots try another member")
	f.IntVar(&flagCfg.MaxConnections, "max-connections", flagCfg.MaxConnections, "connections open at once on --listen (0: the open-file limit minus 512, kept for the database)")
	return cmd
}

// applyFlags copies only the flags the user set, so they override the file
// and environment without defaults clobbering them.
func applyFlags(cmd *cobra.Command, cfg *node.Config, f node.Config) {
	set := cmd.Flags().Changed
	if set("node-id") {
		cfg.NodeID = f.NodeID
	}
	if set("data-dir") {
		cfg.DataDir = f.DataDir
	}
	if set("listen") {
		cfg.Listen = f.Listen
	}
	if set("db-address") {
		cfg.DBAddress = f.DBAddress
	}
	if set("join") {
		cfg.Join = f.Join
	}
	if set("max-connections") {
		cfg.MaxConnections = f.MaxConnections
	}
	if set("max-pending-connections") {
		cfg.MaxPendingConnections = f.MaxPendingConnections
	}
	if set("max-queue-wait") {
		cfg.MaxQueueWait = f.MaxQueueWait
	}
	if set("db-network-latency") {
		cfg.DBNetworkLatency = f.DBNetworkLatency
	}
	if set("db-snapshot-threshold") {
		cfg.DBSnapshotThreshold = f.DBSnapshotThreshold
	}
	if set("db-snapshot-trailing") {
		cfg.DBSnapshotTrailing = f.DBSnapshotTrailing
	}
	if set("retention-interval") {
		cfg.RetentionInterval = f.RetentionInterval
	}
	if set("heartbeat-interval") {
		cfg.HeartbeatInterval = f.HeartbeatInterval
	}
	if set("offline-grace") {
		cfg.OfflineGrace = f.OfflineGrace
	}
	if set("log-level") {
		cfg.LogLevel = f.LogLevel
	}
	if set("ca-dir") {
		cfg.CADir = f.CADir
	}
	if set("ca-passphrase-file") {
		cfg.CAPassphraseFile = f.CAPassphraseFile
	}
	if set("insecure") {
		cfg.Insecure = f.Insecure
	}
	if set("tls-name") {
		cfg.TLSNames = f.TLSNames
	}
	if set("admin-socket") {
		cfg.AdminSocket = f.AdminSocket
	}
	if set("registry-dir") {
		cfg.RegistryDir = f.RegistryDir
	}
	if set("robot-cert-lifetime") {
		cfg.RobotCertLifetime = f.RobotCertLifetime
	}
	if set("discovery") {
		cfg.Discovery = f.Discovery
	}
	if set("discovery-interface") {
		cfg.DiscoveryInterfaces = f.DiscoveryInterfaces
	}
}

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(strings.ToUpper(level)))
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
