package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/lekiwi/heartbeat/control/admission"
	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/store"
)

// Config is a control node's configuration. Precedence: YAML file, then
// environment (LEKIWI_CONTROL_*), then command-line flags.
type Config struct {
	// NodeID names this node in events; defaults to the dqlite address.
	NodeID string `yaml:"node_id"`
	// DataDir holds the dqlite data of this node.
	DataDir string `yaml:"data_dir"`
	// Listen is the HTTP address for robots (/v1/agent), the API and metrics.
	Listen string `yaml:"listen"`
	// DBAddress is where this node's dqlite talks to its peers.
	DBAddress string `yaml:"db_address"`
	// Join lists dqlite addresses of existing members (empty on the first node).
	Join []string `yaml:"join"`
	// DBNetworkLatency is the expected one-way latency between members. dqlite
	// derives its raft timeouts from it: heartbeats every 1.5×, elections
	// after 15× (randomised up to 30×), so it bounds how fast writes resume
	// after the leader dies. Use the same value on every member.
	DBNetworkLatency time.Duration `yaml:"db_network_latency"`
	// DBSnapshotThreshold and DBSnapshotTrailing bound the raft log held in
	// memory (store.Options): a snapshot every threshold entries, trailing
	// entries kept behind it for lagging members. Each entry holds the
	// pages its transaction wrote, so at a storm's write rate this log,
	// not the database, is most of a node's memory.
	DBSnapshotThreshold int `yaml:"db_snapshot_threshold"`
	DBSnapshotTrailing  int `yaml:"db_snapshot_trailing"`
	// HeartbeatInterval is the interval robots are told to heartbeat at.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// OfflineGrace is added to 1.5 heartbeat intervals before a silent robot
	// is declared offline.
	OfflineGrace time.Duration `yaml:"offline_grace"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`

	// CADir holds the fleet CA (ca.crt, ca.key) made by `provision ca init`.
	// Required unless Insecure.
	CADir string `yaml:"ca_dir"`
	// CAPassphraseFile holds the CA key's passphrase, if it has one.
	CAPassphraseFile string `yaml:"ca_passphrase_file"`
	// Insecure serves plain HTTP and accepts robots without certificates.
	// Development only.
	Insecure bool `yaml:"insecure"`
	// TLSNames are extra DNS names and IPs for this node's serving
	// certificate (it always covers localhost and the listen address).
	TLSNames []string `yaml:"tls_names"`
	// AdminSocket is the Unix socket for local administration
	// (`control token|enroll|robot ...`); default <data_dir>/control.sock.
	AdminSocket string `yaml:"admin_socket"`
	// RegistryDir stores the embedded OCI registry served at /v2/ (disk
	// images pushed with `provision image push`); default
	// <data_dir>/registry, "off" disables the registry.
	RegistryDir string `yaml:"registry_dir"`
	// RobotCertLifetime is the validity of robot certificates.
	RobotCertLifetime time.Duration `yaml:"robot_cert_lifetime"`
	// EnrollmentTTL is the default validity of enrollment tokens.
	EnrollmentTTL time.Duration `yaml:"enrollment_ttl"`
	// RateLimit is API requests per second per principal (burst twice that).
	RateLimit float64 `yaml:"rate_limit"`
	// RetentionInterval is how often the leader compacts telemetry
	// (store.DefaultRetentionPolicy); 0 disables retention.
	RetentionInterval time.Duration `yaml:"retention_interval"`
	// OIDC, when its issuer is set, accepts bearer JWTs from that issuer.
	OIDC auth.OIDCConfig `yaml:"oidc"`
	// AlertRules is a YAML file of alert rules and the alert webhook
	// (control/telemetry.ParseRules); empty uses telemetry.DefaultRules,
	// "off" evaluates no rules (telemetry history is still kept).
	AlertRules string `yaml:"alert_rules"`
	// Discovery browses the local network over mDNS for robots
	// (_lekiwi._tcp, _xle._tcp) and records DeviceDiscovered for those not
	// connected. Default on; a node that cannot use port 5353 logs it and
	// runs without.
	Discovery bool `yaml:"discovery"`
	// DiscoveryInterfaces limits the browse to these interfaces (the
	// robots' LAN); empty means every up, multicast, non-loopback
	// interface with an IPv4 address.
	DiscoveryInterfaces []string `yaml:"discovery_interfaces"`
	// MaxPendingConnections bounds connections accepted but not yet
	// admitted (TLS handshake, request, robot hello); a reconnect storm
	// beyond it waits in the kernel's accept queue (control/admission).
	MaxPendingConnections int `yaml:"max_pending_connections"`
	// MaxQueueWait bounds the time a connection waits in the accept queue
	// while max_pending_connections are in flight; older ones are reset so
	// their robots try another member at once (control/admission).
	MaxQueueWait time.Duration `yaml:"max_queue_wait"`
	// MaxConnections bounds connections open at once on the listen port;
	// 0 takes the process's open-file limit minus 512, which are left for
	// the database and files: a node out of descriptors cannot reach its
	// own database.
	MaxConnections int `yaml:"max_connections"`
}

// Defaults are the values of an unconfigured node.
func Defaults() Config {
	return Config{
		DataDir:          "/var/lib/lekiwi/control",
		Listen:           "127.0.0.1:8080",
		DBAddress:        "127.0.0.1:9001",
		DBNetworkLatency: 60 * time.Millisecond,
		// A quarter of dqlite's trailing window (8,192).
		DBSnapshotThreshold: store.DefaultSnapshotThreshold,
		DBSnapshotTrailing:  store.DefaultSnapshotTrailing,
		HeartbeatInterval:   30 * time.Second,
		OfflineGrace:        15 * time.Second,
		LogLevel:            "info",
		RobotCertLifetime:   90 * 24 * time.Hour,
		EnrollmentTTL:       24 * time.Hour,
		RateLimit:           20,
		RetentionInterval:   time.Hour,
		Discovery:           true,

		MaxPendingConnections: admission.DefaultMaxPending,
		MaxQueueWait:          admission.DefaultMaxQueueWait,
	}
}

// EnvPrefix starts every environment override.
const EnvPrefix = "LEKIWI_CONTROL_"

// LoadFile overlays a YAML file onto c. Unknown keys are errors, so a typo
// does not silently leave a default in place.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read control config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("parse control config %s: %w", path, err)
	}
	return nil
}

// LoadEnv overlays LEKIWI_CONTROL_* variables read through getenv.
func (c *Config) LoadEnv(getenv func(string) string) error {
	str := func(name string, dst *string) {
		if v := getenv(EnvPrefix + name); v != "" {
			*dst = v
		}
	}
	dur := func(name string, dst *time.Duration) error {
		v := getenv(EnvPrefix + name)
		if v == "" {
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%s%s=%q is not a duration like 30s: %w", EnvPrefix, name, v, err)
		}
		*dst = d
		return nil
	}
	str("NODE_ID", &c.NodeID)
	str("DATA_DIR", &c.DataDir)
	str("LISTEN", &c.Listen)
	str("DB_ADDRESS", &c.DBAddress)
	str("LOG_LEVEL", &c.LogLevel)
	str("CA_DIR", &c.CADir)
	str("CA_PASSPHRASE_FILE", &c.CAPassphraseFile)
	str("ADMIN_SOCKET", &c.AdminSocket)
	str("REGISTRY_DIR", &c.RegistryDir)
	str("ALERT_RULES", &c.AlertRules) // telemetry alerts
	str("OIDC_ISSUER", &c.OIDC.Issuer)
	str("OIDC_AUDIENCE", &c.OIDC.Audience)
	str("OIDC_ROLE_CLAIM", &c.OIDC.RoleClaim)
	if v := getenv(EnvPrefix + "INSECURE"); v != "" {
		c.Insecure = v == "1" || strings.EqualFold(v, "true")
	}
	if v := getenv(EnvPrefix + "DISCOVERY"); v != "" { // mDNS discovery
		c.Discovery = v == "1" || strings.EqualFold(v, "true")
	}
	if v := getenv(EnvPrefix + "DISCOVERY_INTERFACES"); v != "" {
		c.DiscoveryInterfaces = splitList(v)
	}
	num := func(name string, dst *int) error {
		v := getenv(EnvPrefix + name)
		if v == "" {
			return nil
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%s%s=%q is not a whole number like %d: %w", EnvPrefix, name, v, *dst, err)
		}
		*dst = n
		return nil
	}
	numErr := errors.Join(num("MAX_PENDING_CONNECTIONS", &c.MaxPendingConnections), num("MAX_CONNECTIONS", &c.MaxConnections),
		num("DB_SNAPSHOT_THRESHOLD", &c.DBSnapshotThreshold), num("DB_SNAPSHOT_TRAILING", &c.DBSnapshotTrailing))
	if v := getenv(EnvPrefix + "TLS_NAMES"); v != "" {
		c.TLSNames = splitList(v)
	}
	if v := getenv(EnvPrefix + "JOIN"); v != "" {
		c.Join = splitList(v)
	}
	return errors.Join(numErr, dur("HEARTBEAT_INTERVAL", &c.HeartbeatInterval), dur("OFFLINE_GRACE", &c.OfflineGrace), dur("DB_NETWORK_LATENCY", &c.DBNetworkLatency), dur("RETENTION_INTERVAL", &c.RetentionInterval), dur("MAX_QUEUE_WAIT", &c.MaxQueueWait))
}

// Validate reports every problem with c at once.
func (c *Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is required"))
	}
	for name, addr := range map[string]string{"listen": c.Listen, "db_address": c.DBAddress} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q must be host:port: %w", name, addr, err))
		}
	}
	for _, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			errs = append(errs, fmt.Errorf("join address %q must be host:port: %w", j, err))
		}
		if j == c.DBAddress {
			errs = append(errs, fmt.Errorf("join lists this node's own db_address %q: name the other members", j))
		}
	}
	if c.DBNetworkLatency < time.Millisecond || c.DBNetworkLatency > time.Minute {
		errs = append(errs, fmt.Errorf("db_network_latency %s must be between 1ms and 1m (it is the one-way latency between members, default 60ms)", c.DBNetworkLatency))
	}
	if c.DBSnapshotThreshold < 64 || c.DBSnapshotThreshold > 1<<20 {
		errs = append(errs, fmt.Errorf("db_snapshot_threshold %d must be between 64 and 1048576 raft entries (default %d)", c.DBSnapshotThreshold, store.DefaultSnapshotThreshold))
	}
	if c.DBSnapshotTrailing < c.DBSnapshotThreshold || c.DBSnapshotTrailing > 1<<20 {
		errs = append(errs, fmt.Errorf("db_snapshot_trailing %d must be between db_snapshot_threshold (%d) and 1048576 raft entries (default %d)", c.DBSnapshotTrailing, c.DBSnapshotThreshold, store.DefaultSnapshotTrailing))
	}
	if c.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("max_connections %d must be 0 (the open-file limit minus 512) or positive", c.MaxConnections))
	}
	if c.MaxPendingConnections < 1 || c.MaxPendingConnections > 100000 {
		errs = append(errs, fmt.Errorf("max_pending_connections %d must be between 1 and 100000 (connections in TLS handshake or hello at once; default %d)", c.MaxPendingConnections, admission.DefaultMaxPending))
	}
	if c.MaxQueueWait < 10*time.Millisecond || c.MaxQueueWait > time.Minute {
		errs = append(errs, fmt.Errorf("max_queue_wait %s must be between 10ms and 1m (time in the accept queue before a connection is reset so its robot tries another member; default %s)", c.MaxQueueWait, admission.DefaultMaxQueueWait))
	}
	if c.HeartbeatInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("heartbeat_interval %s is below 100ms", c.HeartbeatInterval))
	}
	switch {
	case c.Insecure && c.CADir != "":
		errs = append(errs, errors.New("insecure and ca_dir exclude each other: drop --insecure to use the CA"))
	case !c.Insecure && c.CADir == "":
		errs = append(errs, errors.New("ca_dir is required (create a CA with `provision ca init --dir DIR`), or pass --insecure for development"))
	}
	if c.RobotCertLifetime < time.Hour {
		errs = append(errs, fmt.Errorf("robot_cert_lifetime %s is below 1h", c.RobotCertLifetime))
	}
	if c.RateLimit <= 0 {
		errs = append(errs, fmt.Errorf("rate_limit %v must be positive", c.RateLimit))
	}
	if (c.OIDC.Issuer == "") != (c.OIDC.Audience == "") {
		errs = append(errs, errors.New("oidc needs both issuer and audience"))
	}
	if c.RetentionInterval != 0 && c.RetentionInterval < time.Second {
		errs = append(errs, fmt.Errorf("retention_interval %s must be 0 (off) or at least 1s", c.RetentionInterval))
	}
	if c.OfflineGrace < 0 {
		errs = append(errs, fmt.Errorf("offline_grace %s is negative", c.OfflineGrace))
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q is not debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// storeOptions are the database settings of c (TLS is added by the caller).
func (c *Config) storeOptions(log *slog.Logger, rolesAdjustment time.Duration) store.Options {
	return store.Options{Dir: c.DataDir, Address: c.DBAddress, Join: c.Join, Logger: log, RolesAdjustment: rolesAdjustment,
		NetworkLatency: c.DBNetworkLatency, SnapshotThreshold: uint64(c.DBSnapshotThreshold), SnapshotTrailing: uint64(c.DBSnapshotTrailing)}
}
