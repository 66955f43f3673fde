package main

import (
	"bytes"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// minPassphrase is enforced when a CA is created: the passphrase is all
// that stands between a copied ca.key and the fleet.
const minPassphrase = 8

// passphraseFlags are --passphrase-file and --passphrase-env. There is no
// --passphrase flag on purpose: a command line is visible in ps and shell
// history.
type passphraseFlags struct {
	file, env string
}

func (p *passphraseFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.file, "passphrase-file", "", "read the CA key passphrase from this file (one trailing newline is ignored)")
	cmd.Flags().StringVar(&p.env, "passphrase-env", "", "read the CA key passphrase from this environment variable")
	cmd.MarkFlagsMutuallyExclusive("passphrase-file", "passphrase-env")
}

// given tells whether a passphrase source was named.
func (p *passphraseFlags) given() bool { return p.file != "" || p.env != "" }

// read returns the passphrase, or nil when no source was named. A named
// source that is missing or empty is an error, never a silent "no
// passphrase".
func (p *passphraseFlags) read(lookupEnv func(string) (string, bool)) ([]byte, error) {
	switch {
	case p.file != "":
		b, err := os.ReadFile(p.file)
		if err != nil {
			return nil, fmt.Errorf("read --passphrase-file: %w", err)
		}
		b = bytes.TrimSuffix(b, []byte("\n"))
		b = bytes.TrimSuffix(b, []byte("\r"))
		if len(b) == 0 {
			return nil, fmt.Errorf("--passphrase-file %s is empty: put the passphrase in it", p.file)
		}
		return b, nil
	case p.env != "":
		v, ok := lookupEnv(p.env)
		if !ok {
			return nil, fmt.Errorf("--passphrase-env: environment variable %s is not set", p.env)
		}
		if v == "" {
			return nil, fmt.Errorf("--passphrase-env: environment variable %s is empty", p.env)
		}
		return []byte(v), nil
	}
	return nil, nil
}
