package main

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/control/admin"
	"github.com/lekiwi/heartbeat/control/api"
	"github.com/lekiwi/heartbeat/control/auth"
	"github.com/lekiwi/heartbeat/control/node"
)

// adminFlags locate the admin socket of the node on this host.
type adminFlags struct {
	socket  string
	dataDir string
}

func (f *adminFlags) add(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.socket, "admin-socket", "", "admin socket of the local control node (default <data-dir>/control.sock)")
	cmd.PersistentFlags().StringVar(&f.dataDir, "data-dir", node.Defaults().DataDir, "data directory of the local control node")
}

func (f *adminFlags) client() *admin.Client {
	path := f.socket
	if path == "" {
		path = os.Getenv(node.EnvPrefix + "ADMIN_SOCKET")
	}
	if path == "" {
		path = filepath.Join(f.dataDir, "control.sock")
	}
	return admin.New(path)
}

func newToken(f *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage API bearer tokens (operator, engineer, admin)"}
	var role, expires string
	create := &cobra.Command{
		Use:   "create --name NAME --role ROLE",
		Short: "Create a token and print it once",
		Long: `Create an API bearer token. The token is printed once and stored only as a
hash: keep it somewhere safe. Roles: operator (read, teleoperate), engineer
(read, deploy, configure), admin (everything).`,
		Example: `  control token create --name alice --role engineer --expires 720h
  curl -H "Authorization: Bearer lkw_..." https://control:8080/v1/robots`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name, _ := cmd.Flags().GetString("name")
			var out api.TokenCreated
			if err := f.client().Do(cmd.Context(), "POST", "/v1/tokens", api.TokenRequest{Name: name, Role: role, ExpiresIn: expires}, &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s for %s (role %s) — shown once:\n", out.ID, out.Name, out.Role)
			fmt.Fprintln(cmd.OutOrStdout(), out.Token)
			return nil
		},
	}
	create.Flags().String("name", "", "who the token is for (required)")
	create.Flags().StringVar(&role, "role", "", "operator, engineer or admin (required)")
	create.Flags().StringVar(&expires, "expires", "", "lifetime, e.g. 720h (default: never)")
	_ = create.MarkFlagRequired("name")
	_ = create.MarkFlagRequired("role")
	list := &cobra.Command{
		Use: "list", Short: "List tokens (never their secrets)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Tokens []auth.TokenRecord `json:"tokens"`
			}
			if err := f.client().Do(cmd.Context(), "GET", "/v1/tokens", nil, &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tROLE\tCREATED\tEXPIRES\tREVOKED")
			for _, t := range out.Tokens {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, stamp(t.CreatedAt), stamp(t.ExpiresAt), stamp(t.RevokedAt))
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use: "revoke ID", Short: "Revoke a token at once", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.client().Do(cmd.Context(), "DELETE", "/v1/tokens/"+args[0], nil, nil)
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func newEnroll(f *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "enroll", Short: "Issue single-use enrollment tokens for new robots"}
	var robot, ttl string
	create := &cobra.Command{
		Use:   "create --robot-id ID",
		Short: "Create a single-use enrollment token for a robot",
		Long: `Create a single-use, short-lived token a new robot trades (with a CSR for a key
it generated itself) for its certificate at POST /v1/enroll. Put it in the
robot's agent configuration (enrollment_token or enrollment_token_file).`,
		Example: `  control enroll create --robot-id lekiwi-0042 --ttl 2h`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out protocol.EnrollmentCreated
			if err := f.client().Do(cmd.Context(), "POST", protocol.EnrollmentsPath, protocol.EnrollmentRequest{RobotID: robot, TTL: ttl}, &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "enrollment token for %s, valid until %s, single use:\n", out.RobotID, out.ExpiresAt.Format(time.RFC3339))
			fmt.Fprintln(cmd.OutOrStdout(), out.Token)
			return nil
		},
	}
	create.Flags().StringVar(&robot, "robot-id", "", "robot id the certificate will name (required)")
	create.Flags().StringVar(&ttl, "ttl", "", "validity, e.g. 2h (default: the node's enrollment_ttl)")
	_ = create.MarkFlagRequired("robot-id")
	cmd.AddCommand(create)
	return cmd
}

func newRobot(f *adminFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "robot", Short: "Act on robots"}
	var reason string
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a robot's certificates and cut its live session on every node",
		Long: `Revoke every certificate the robot holds. Its live session is closed within a
second on every control node and it cannot connect again until it is enrolled
anew with a fresh token.`,
		Example: `  control robot revoke lekiwi-0042 --reason "reported stolen"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				Serials []string `json:"revoked_serials"`
			}
			if err := f.client().Do(cmd.Context(), "POST", "/v1/robots/"+args[0]+"/revoke", api.RevokeRequest{Reason: reason}, &out); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %d certificate(s) of %s\n", len(out.Serials), args[0])
			return nil
		},
	}
	revoke.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit log)")
	cmd.AddCommand(revoke)
	return cmd
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04")
}
