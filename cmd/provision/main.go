// Command provision is the technician's tool: the fleet CA (`provision
// ca`), robot images (`provision image`) and the flashing bench
// (`provision flash`). The logic lives in control/pki, image/... and
// provision/...; this is flags around them.
// It is CGO-free so it cross-compiles to a Pi (linux/arm64).
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/internal/version"
)

func main() {
	root := newRoot(os.Stdout, os.Stderr, os.LookupEnv)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "provision:", err)
		os.Exit(1)
	}
}

// newRoot builds the command tree; output streams and the environment are
// injected so tests run it in-process.
func newRoot(stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) *cobra.Command {
	root := &cobra.Command{
		Use:   "provision",
		Short: "Lekiwi Heartbeat technician tool: certificate authority, robot images, flashing cards",
		Long: `provision is the technician's bench tool for the Lekiwi Heartbeat fleet.

  provision ca      the fleet's certificate authority (CA): it signs a
                    certificate for every control node, witness and netboot
                    station (node certificates, made here) and for every
                    robot (made by control when a robot enrolls or renews).
                    Whoever holds ca.key can mint any identity in the fleet:
                    keep it encrypted, offline, and backed up.
  provision image   build, customize, inspect, push and pull A/B robot images
  provision flash   write an image to many SD cards or NVMe drives at once,
                    verified, each card with its own robot identity`,
		Example: `  # A new fleet: create the CA, protected by a passphrase kept in a file.
  provision ca init --dir ./fleet-ca --passphrase-file ~/.lekiwi-ca-pass

  # What is this CA? (reads only ca.crt, no passphrase needed)
  provision ca show --dir ./fleet-ca

  # A certificate for the first control node.
  provision ca issue-node --dir ./fleet-ca --passphrase-file ~/.lekiwi-ca-pass \
    --name control-a --dns control-a.lan --ip 10.0.0.5 \
    --out-cert control-a.crt --out-key control-a.key`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newCACmd(lookupEnv), newVersionCmd(), newImageCmd(lookupEnv), newFlash(lookupEnv))
	root.AddCommand(newReleaseCmd(lookupEnv))
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of provision",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "provision %s (%s, %s/%s)\n", version.String(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
