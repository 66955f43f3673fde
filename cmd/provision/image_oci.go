package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/image/ociart"
)

// registryFlags are the connection and credential flags push and pull share.
type registryFlags struct {
	insecure                                 bool
	token, tokenFile, username, passwordFile string
	caFile, tmp                              string
}

func (f *registryFlags) register(c *cobra.Command) {
	fl := c.Flags()
	fl.BoolVar(&f.insecure, "insecure", false, "talk plain HTTP to the registry (a lab registry on localhost)")
	fl.StringVar(&f.token, "token", "", "bearer token (control API token); visible in ps: prefer LEKIWI_TOKEN or --token-file")
	fl.StringVar(&f.tokenFile, "token-file", "", "read the bearer token from this file")
	fl.StringVar(&f.username, "username", "", "registry user name (with --password-file)")
	fl.StringVar(&f.passwordFile, "password-file", "", "read the registry password from this file")
	fl.StringVar(&f.caFile, "ca-file", "", "trust this CA (PEM) for the registry's HTTPS certificate, e.g. the fleet's ca.crt for control's registry")
	c.MarkFlagsMutuallyExclusive("token", "token-file", "username")
	c.MarkFlagsRequiredTogether("username", "password-file")
}

func readSecret(path, what string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	s := string(bytes.TrimRight(b, "\r\n"))
	if s == "" {
		return "", fmt.Errorf("%s %s is empty", what, path)
	}
	return s, nil
}

func (f *registryFlags) options(cmd *cobra.Command, lookupEnv func(string) (string, bool)) (ociart.Options, error) {
	o := ociart.Options{Insecure: f.insecure, Progress: cmd.ErrOrStderr(), TempDir: f.tmp}
	token := f.token
	if f.tokenFile != "" {
		t, err := readSecret(f.tokenFile, "--token-file")
		if err != nil {
			return o, err
		}
		token = t
	}
	if token == "" && f.username == "" {
		token, _ = lookupEnv("LEKIWI_TOKEN")
	}
	switch {
	case token != "":
		o.Auth = authn.FromConfig(authn.AuthConfig{RegistryToken: token})
	case f.username != "":
		pw, err := readSecret(f.passwordFile, "--password-file")
		if err != nil {
			return o, err
		}
		o.Auth = &authn.Basic{Username: f.username, Password: pw}
	}
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return o, fmt.Errorf("read --ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return o, fmt.Errorf("--ca-file %s holds no PEM certificate", f.caFile)
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		o.Transport = t
	}
	return o, nil
}

// cmdContext is the command's context, or Background when it was run
// without one (tests calling Execute).
func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

func newImagePush(lookupEnv func(string) (string, bool)) *cobra.Command {
	var (
		rf                     registryFlags
		version, profile, base string
	)
	c := &cobra.Command{
		Use:   "push IMG REF",
		Short: "Push a built image to an OCI registry as an artifact (one zstd layer per partition)",
		Long: `Push uploads a GPT disk image made by "provision image build" to any OCI
registry (control's embedded registry at /v2/, a Docker registry, a cloud
registry) as an artifact of type application/vnd.lekiwi.image.v1: one
zstd-compressed layer per partition, one layer with the partition table, and
IMG.bmap as a layer when it exists.

The push is reproducible: the same image, flags and SOURCE_DATE_EPOCH (the
org.opencontainers.image.created annotation) give the same manifest digest,
and unchanged partitions are not uploaded again. The digest is printed on
stdout, progress goes to stderr.

Credentials: --token (or LEKIWI_TOKEN, or --token-file) sends a bearer token,
as control's registry wants (pushing needs the engineer or admin role);
--username with --password-file does basic authentication; otherwise the
Docker credential store (~/.docker/config.json) is used.`,
		Example: `  # To control's embedded registry (HTTPS with the fleet CA).
  LEKIWI_TOKEN=$(cat ~/.lekiwi-token) provision image push --ca-file fleet-ca/ca.crt \
    --version 1.4.0 --profile lekiwi --base raspios-bookworm lekiwi.img control-a.lan:8443/lekiwi/image:1.4.0

  # To a lab registry on this machine over plain HTTP.
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) provision image push --insecure lekiwi.img localhost:5000/lekiwi/image:dev`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := rf.options(cmd, lookupEnv)
			if err != nil {
				return err
			}
			meta := ociart.Meta{Version: version, Profile: profile, Base: base}
			if s, ok := lookupEnv("SOURCE_DATE_EPOCH"); ok && s != "" {
				sec, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970: %w", s, err)
				}
				meta.Created = time.Unix(sec, 0)
			}
			digest, err := ociart.Push(cmdContext(cmd), args[0], args[1], meta, o)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), digest)
			return err
		},
	}
	rf.register(c)
	c.Flags().StringVar(&version, "version", "", "image version (org.opencontainers.image.version annotation)")
	c.Flags().StringVar(&profile, "profile", "", "robot profile the image was built for (lekiwi, xle)")
	c.Flags().StringVar(&base, "base", "", "base image the build started from")
	c.Flags().StringVar(&rf.tmp, "tmp", "", "directory for the compressed layers while pushing (default $TMPDIR)")
	return c
}

func newImagePull(lookupEnv func(string) (string, bool)) *cobra.Command {
	var rf registryFlags
	c := &cobra.Command{
		Use:   "pull REF IMG",
		Short: "Pull an image artifact from an OCI registry back into a disk image file",
		Long: `Pull fetches an image pushed by "provision image push" and writes it to IMG,
byte for byte identical to what was pushed, sparsely (zero blocks stay holes).
It is written to IMG.partial first: every layer's digest and every
partition's sha256 are checked, and only then is it renamed to IMG. IMG.bmap
is written next to it when the artifact carries it.

Credentials are the same as for push; pulling needs any valid token on
control's registry.`,
		Example: `  provision image pull --ca-file fleet-ca/ca.crt control-a.lan:8443/lekiwi/image:1.4.0 lekiwi.img
  provision image pull --insecure localhost:5000/lekiwi/image:dev lekiwi.img`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := rf.options(cmd, lookupEnv)
			if err != nil {
				return err
			}
			meta, err := ociart.Pull(cmdContext(cmd), args[0], args[1], o)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: profile %q version %q base %q\n", args[1], meta.Profile, meta.Version, meta.Base)
			return err
		},
	}
	rf.register(c)
	return c
}
