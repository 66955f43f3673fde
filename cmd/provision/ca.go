package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/control/pki"
)

func newCACmd(lookupEnv func(string) (string, bool)) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Create and inspect the fleet CA, issue node certificates",
		Long: `The fleet CA lives in one directory:

  ca.crt  the CA certificate (0644): public, every node and robot trusts it
  ca.key  the CA private key (0600, PKCS#8): secret, encrypted when a
          passphrase is given; commands refuse a key readable by others

Passphrases are read from a file (--passphrase-file) or an environment
variable (--passphrase-env), never from the command line.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newCAInitCmd(lookupEnv), newCAShowCmd(), newCAIssueNodeCmd(lookupEnv))
	return cmd
}

func newCAInitCmd(lookupEnv func(string) (string, bool)) *cobra.Command {
	var (
		dir, name, keyType string
		lifetime           time.Duration
		pass               passphraseFlags
	)
	cmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Create a new CA in DIR (refuses to overwrite one)",
		Long: `Create a new certificate authority: a fresh key and a self-signed CA
certificate, written to DIR/ca.crt and DIR/ca.key (DIR is created 0700).

An existing CA in DIR is never overwritten: replacing a CA invalidates every
certificate in the fleet, so move the old one away yourself if you mean it.

Without a passphrase the key is written unencrypted (a warning is printed):
keep it on encrypted storage then. Print the fingerprint and keep it: it is
how you recognise this CA later (` + "`provision ca show`" + `).`,
		Example: `  # Passphrase from a file (its one trailing newline is ignored):
  provision ca init --dir ./fleet-ca --passphrase-file ~/.lekiwi-ca-pass

  # Passphrase from the environment, Ed25519 key, 20-year CA:
  LEKIWI_CA_PASS='…' provision ca init --dir ./fleet-ca \
    --passphrase-env LEKIWI_CA_PASS --key-type ed25519 --lifetime 175200h

  # A throwaway lab CA, unencrypted:
  provision ca init --dir /tmp/lab-ca --name "Lab CA"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return fmt.Errorf("--key-type: %w", err)
			}
			if lifetime <= 0 {
				return fmt.Errorf("--lifetime %v must be positive, e.g. 87600h (10 years)", lifetime)
			}
			passphrase, err := pass.read(lookupEnv)
			if err != nil {
				return err
			}
			if pass.given() && len(passphrase) < minPassphrase {
				return fmt.Errorf("passphrase is %d bytes: use at least %d (a copied ca.key is only as safe as it)", len(passphrase), minPassphrase)
			}
			ca, err := pki.Create(pki.CreateOptions{Name: name, KeyType: kt, Lifetime: lifetime})
			if err != nil {
				return err
			}
			if err := ca.Save(dir, passphrase); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Created CA %q\n", ca.Cert.Subject.CommonName)
			printCert(out, ca.Cert)
			fmt.Fprintf(out, "  certificate:  %s (public: give it to nodes and robots)\n", filepath.Join(dir, pki.CertFile))
			protection := "encrypted with your passphrase"
			if passphrase == nil {
				protection = "NOT encrypted"
			}
			fmt.Fprintf(out, "  private key:  %s (secret, %s)\n", filepath.Join(dir, pki.KeyFile), protection)
			if passphrase == nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning: the CA key is not encrypted; anyone who copies it can impersonate any robot or node. Use --passphrase-file or --passphrase-env for a real fleet.")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory for ca.crt and ca.key (required)")
	f.StringVar(&name, "name", pki.DefaultCAName, "the CA's common name")
	f.StringVar(&keyType, "key-type", string(pki.KeyECDSAP256), "CA key type: ecdsa-p256 or ed25519")
	f.DurationVar(&lifetime, "lifetime", pki.DefaultCALifetime, "how long the CA is valid (87600h = 10 years)")
	pass.register(cmd)
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

func newCAShowCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "show --dir DIR",
		Short: "Print the CA's subject, key type, validity and fingerprint",
		Long: `Print what DIR/ca.crt says: subject, key type, validity, serial and
SHA-256 fingerprint. Only the certificate is read, so no passphrase is
needed and a copy of ca.crt alone is enough.`,
		Example: `  provision ca show --dir ./fleet-ca

  # Compare with what OpenSSL sees (same fingerprint, with colons):
  openssl x509 -in ./fleet-ca/ca.crt -noout -fingerprint -sha256`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cert, err := pki.LoadCert(dir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "CA %q\n", cert.Subject.CommonName)
			printCert(out, cert)
			fmt.Fprintf(out, "  certificate:  %s\n", filepath.Join(dir, pki.CertFile))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory holding ca.crt (required)")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

func newCAIssueNodeCmd(lookupEnv func(string) (string, bool)) *cobra.Command {
	var (
		dir, name, keyType, outCert, outKey string
		dns, ips                            []string
		lifetime                            time.Duration
		pass                                passphraseFlags
	)
	cmd := &cobra.Command{
		Use:   "issue-node --dir DIR --name NAME --out-cert FILE --out-key FILE",
		Short: "Issue a certificate and key for a control node, witness or netboot station",
		Long: `Issue a node certificate: CN=NAME, OU=node, usable as TLS server and
client (nodes serve robots and dashboards, and dial each other for the
database). List every DNS name and IP the node is reached by: TLS clients
check them. The key is written 0600 and the certificate 0644; existing
files are never overwritten.

Copy the key only to the node it names, together with the CA's ca.crt.`,
		Example: `  # A control node reached by name and address:
  provision ca issue-node --dir ./fleet-ca --passphrase-file ~/.lekiwi-ca-pass \
    --name control-a --dns control-a.lan --dns control.lan --ip 10.0.0.5 \
    --out-cert control-a.crt --out-key control-a.key

  # The dqlite witness on the netboot station, valid for 90 days:
  provision ca issue-node --dir ./fleet-ca --passphrase-env LEKIWI_CA_PASS \
    --name witness --ip 10.0.0.9 --lifetime 2160h \
    --out-cert witness.crt --out-key witness.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kt, err := pki.ParseKeyType(keyType)
			if err != nil {
				return fmt.Errorf("--key-type: %w", err)
			}
			if lifetime <= 0 {
				return fmt.Errorf("--lifetime %v must be positive, e.g. 8760h (1 year)", lifetime)
			}
			req := pki.NodeRequest{Name: name, DNS: dns, Lifetime: lifetime, KeyType: kt}
			for _, s := range ips {
				ip := net.ParseIP(strings.TrimSpace(s))
				if ip == nil {
					return fmt.Errorf("--ip %q is not an IP address", s)
				}
				req.IPs = append(req.IPs, ip)
			}
			if err := checkOutputs(outCert, outKey); err != nil {
				return err
			}
			passphrase, err := pass.read(lookupEnv)
			if err != nil {
				return err
			}
			ca, err := pki.Load(dir, passphrase)
			if err != nil {
				if errors.Is(err, pki.ErrPassphraseRequired) {
					return fmt.Errorf("%w: give --passphrase-file FILE or --passphrase-env VAR", err)
				}
				return err
			}
			certPEM, keyPEM, err := ca.IssueNode(req, time.Now())
			if err != nil {
				return err
			}
			// Key first: a certificate without its key is useless, a key
			// without its certificate is removed below.
			if err := pki.WriteNewFile(outKey, keyPEM, 0o600); err != nil {
				return fmt.Errorf("write node key: %w", err)
			}
			if err := pki.WriteNewFile(outCert, certPEM, 0o644); err != nil {
				os.Remove(outKey)
				return fmt.Errorf("write node certificate: %w", err)
			}
			cert, err := pki.ParseCertPEM(certPEM)
			if err != nil {
				return fmt.Errorf("read back node certificate %s: %w", outCert, err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Issued node certificate %q (signed by %q)\n", cert.Subject.CommonName, ca.Cert.Subject.CommonName)
			printCert(out, cert)
			if len(cert.DNSNames)+len(cert.IPAddresses) > 0 {
				fmt.Fprintf(out, "  names:        %s\n", sans(cert))
			}
			fmt.Fprintf(out, "  certificate:  %s\n", outCert)
			fmt.Fprintf(out, "  private key:  %s (secret, 0600: copy it only to %s)\n", outKey, cert.Subject.CommonName)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "CA directory holding ca.crt and ca.key (required)")
	f.StringVar(&name, "name", "", "node name, the certificate's CN, e.g. control-a (required)")
	f.StringSliceVar(&dns, "dns", nil, "DNS name the node is reached by; repeat or comma-separate")
	f.StringSliceVar(&ips, "ip", nil, "IP address the node is reached by; repeat or comma-separate")
	f.DurationVar(&lifetime, "lifetime", pki.DefaultNodeLifetime, "how long the certificate is valid (capped at the CA's expiry)")
	f.StringVar(&keyType, "key-type", string(pki.KeyECDSAP256), "node key type: ecdsa-p256 or ed25519")
	f.StringVar(&outCert, "out-cert", "", "where to write the node certificate (PEM, must not exist; required)")
	f.StringVar(&outKey, "out-key", "", "where to write the node private key (PEM PKCS#8, must not exist; required)")
	pass.register(cmd)
	for _, req := range []string{"dir", "name", "out-cert", "out-key"} {
		_ = cmd.MarkFlagRequired(req)
	}
	return cmd
}

// checkOutputs fails before any CA work when the output files are unusable,
// so a technician does not type a passphrase for nothing.
func checkOutputs(certPath, keyPath string) error {
	if filepath.Clean(certPath) == filepath.Clean(keyPath) {
		return fmt.Errorf("--out-cert and --out-key are both %s: give two different files", certPath)
	}
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s already exists: refusing to overwrite it; remove it or choose another path", p)
		}
	}
	return nil
}

// printCert prints the lines every ca command shows about a certificate.
func printCert(w io.Writer, cert *x509.Certificate) {
	fmt.Fprintf(w, "  subject:      %s\n", cert.Subject)
	fmt.Fprintf(w, "  key type:     %s\n", pki.DescribePublicKey(cert.PublicKey))
	fmt.Fprintf(w, "  valid:        %s to %s (%s)\n", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), remaining(cert.NotAfter, time.Now()))
	fmt.Fprintf(w, "  serial:       %s\n", pki.SerialHex(cert))
	fmt.Fprintf(w, "  fingerprint:  sha256 %s\n", pki.Fingerprint(cert))
}

func remaining(notAfter, now time.Time) string {
	d := notAfter.Sub(now)
	if d < 0 {
		return fmt.Sprintf("EXPIRED %d days ago", int(-d.Hours()/24))
	}
	return fmt.Sprintf("%d days left", int(d.Hours()/24))
}

func sans(cert *x509.Certificate) string {
	var names []string
	names = append(names, cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		names = append(names, ip.String())
	}
	return strings.Join(names, ", ")
}
