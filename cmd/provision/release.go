package main

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lekiwi/heartbeat/image/release"
)

func newReleaseCmd(lookupEnv func(string) (string, bool)) *cobra.Command {
	c := &cobra.Command{
		Use:   "release",
		Short: "Make, sign, push and inspect over-the-air update releases (signed, delta-friendly OCI artifacts)",
		Long: `A release is what robots update to: the boot and system partitions of both
slots of a built image, cut into content-defined chunks (so a robot downloads
only the chunks its active slot lacks), zstd-compressed, with the chunk index
and metadata in the config blob, signed with Ed25519. Robots accept only
releases signed by a key baked into their image with
"provision image build --update-key KEY.pub".`,
		Example: `  provision release keygen --out release.key            # release.key + release.key.pub
  provision release create --image lekiwi.img --version 1.4.0 --profile lekiwi --out rel-1.4.0
  provision release sign --key release.key rel-1.4.0
  provision release push --ca-file fleet-ca/ca.crt rel-1.4.0 control-a.lan:8443/lekiwi/release:1.4.0
  provision release inspect --key release.key.pub rel-1.4.0`,
	}
	c.AddCommand(newReleaseKeygen(), newReleaseCreate(), newReleaseSign(), newReleasePush(lookupEnv), newReleaseInspect(lookupEnv))
	return c
}

func newReleaseKeygen() *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "keygen --out KEY",
		Short: "Make an Ed25519 release signing key (KEY, PKCS#8 PEM, 0600) and its public key (KEY.pub)",
		Long: `Keygen writes the private key to KEY (mode 0600; keep it offline, like the
fleet CA) and the public key to KEY.pub, the file to bake into images with
"provision image build --update-key KEY.pub". It never overwrites a file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pub, err := release.GenerateKey(out)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: key id %s (public key %s.pub)\n", out, release.KeyID(pub), out)
			return err
		},
	}
	c.Flags().StringVar(&out, "out", "", "private key file to create (the public key goes to FILE.pub)")
	c.MarkFlagRequired("out")
	return c
}

func newReleaseCreate() *cobra.Command {
	var (
		img, version, minAgent, profile, out string
		parts                                []string
		security                             int64
	)
	c := &cobra.Command{
		Use:   "create --image IMG --version V --out DIR",
		Short: "Make an unsigned release (OCI layout directory) from a built A/B image",
		Long: `Create cuts the image's boot_a, system_a, boot_b and system_b partitions into
content-defined chunks, stores each distinct chunk once, zstd-compressed, in
pack blobs, and writes an OCI image layout directory DIR (it must not exist
or be empty). The same image and flags always give the same digest. Sign it
next with "provision release sign".

Robots refuse a release whose security version is below the highest one
they committed or the build time of the image they run (a downgrade),
unless the deployment allows it (control deploy create --allow-downgrade).
The security version defaults to the image's build time (its
SOURCE_DATE_EPOCH, recorded by "provision image build"), so every later
build supersedes the earlier ones. After a security fix, raise it past the
build time of every release with the hole (e.g. --security-version
$(date +%s)): once a robot commits this release it never goes back below it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var o release.CreateOptions
			if len(parts) > 0 {
				o.Partitions = parts
			}
			meta := release.Meta{Version: version, Profile: profile, MinAgentVersion: minAgent, SecurityVersion: security}
			d, err := release.Create(cmdContext(cmd), img, out, meta, o)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), d)
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&img, "image", "", "A/B image built by `provision image build`")
	f.StringVar(&version, "version", "", "release version")
	f.StringVar(&minAgent, "min-agent", "", "oldest agent version that may install this release")
	f.StringVar(&profile, "profile", "", "robot profile the image was built for (lekiwi, xle)")
	f.StringVar(&out, "out", "", "release directory to create (OCI image layout)")
	f.StringSliceVar(&parts, "partitions", nil, "partitions to carry (default boot_a,system_a,boot_b,system_b)")
	f.Int64Var(&security, "security-version", 0, "downgrade-protection counter, Unix seconds (default the image's build time); raise it to forbid robots from ever going back below a release with a security fix")
	for _, n := range []string{"image", "version", "out"} {
		c.MarkFlagRequired(n)
	}
	return c
}

func newReleaseSign() *cobra.Command {
	var key string
	c := &cobra.Command{
		Use:   "sign --key KEY DIR",
		Short: "Sign a release directory with an Ed25519 key (adds to, or replaces this key's, signature)",
		Long: `Sign checks the release in DIR and adds KEY's Ed25519 signature over the
artifact type and config digest to the manifest's
org.lekiwi.release.signatures annotation. Signing with a second key adds a
second signature (key rotation); re-signing with the same key replaces its
own. The new manifest digest is printed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			priv, err := release.ReadPrivateKey(key)
			if err != nil {
				return err
			}
			d, err := release.SignDir(args[0], priv)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s (signed by %s)\n", d, release.KeyID(priv.Public().(ed25519.PublicKey)))
			return err
		},
	}
	c.Flags().StringVar(&key, "key", "", "private key made by `provision release keygen`")
	c.MarkFlagRequired("key")
	return c
}

func newReleasePush(lookupEnv func(string) (string, bool)) *cobra.Command {
	var rf registryFlags
	c := &cobra.Command{
		Use:   "push DIR REF",
		Short: "Push a release directory to an OCI registry",
		Long: `Push uploads the release in DIR to REF with its signatures; blobs the
registry already has (unchanged packs) are not uploaded again. Credentials
are those of "provision image push". The manifest digest is printed.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := rf.options(cmd, lookupEnv)
			if err != nil {
				return err
			}
			raw, cfg, err := release.ReadDir(args[0])
			if err != nil {
				return err
			}
			if _, sigs, err := release.Inspect(raw, cfg); err != nil {
				return err
			} else if len(sigs) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning: the release is unsigned; robots will refuse it until it is signed and pushed again")
			}
			d, err := release.Push(cmdContext(cmd), args[0], args[1], o)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), d)
			return err
		},
	}
	rf.register(c)
	return c
}

func newReleaseInspect(lookupEnv func(string) (string, bool)) *cobra.Command {
	var (
		rf     registryFlags
		keys   []string
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "inspect REF|DIR",
		Short: "Show a release's metadata, partitions, packs and signatures; with --key, verify it as a robot would",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var raw, cfgBytes []byte
			var err error
			if st, serr := os.Stat(args[0]); serr == nil && st.IsDir() {
				raw, cfgBytes, err = release.ReadDir(args[0])
			} else {
				o, oerr := rf.options(cmd, lookupEnv)
				if oerr != nil {
					return oerr
				}
				raw, cfgBytes, err = release.Pull(cmdContext(cmd), args[0], o)
			}
			if err != nil {
				return err
			}
			cfg, sigs, err := release.Inspect(raw, cfgBytes)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				b, err := json.MarshalIndent(cfg, "", "  ")
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(w, "%s\n", b)
				return err
			}
			fmt.Fprintf(w, "version %s  profile %q  minimum agent %q\n", cfg.Version, cfg.Profile, cfg.MinAgentVersion)
			fmt.Fprintf(w, "security version %d%s\n", cfg.SecurityVersion, securityTime(cfg.SecurityVersion))
			fmt.Fprintf(w, "chunking %s (%d/%d/%d)  %d distinct chunks\n", cfg.Chunking.Algorithm, cfg.Chunking.Min, cfg.Chunking.Avg, cfg.Chunking.Max, len(cfg.Chunks))
			for _, p := range cfg.Partitions {
				fmt.Fprintf(w, "partition %-10s %6d MiB  %6d chunks  sha256 %s\n", p.Name, p.Size>>20, len(p.Chunks), p.SHA256)
			}
			var total int64
			for _, p := range cfg.Packs {
				fmt.Fprintf(w, "pack %s  %d bytes\n", p.Digest, p.Size)
				total += p.Size
			}
			fmt.Fprintf(w, "index %d bytes, packs %d bytes\n", len(cfgBytes), total)
			if len(sigs) == 0 {
				fmt.Fprintln(w, "signatures: none (robots refuse it)")
			} else {
				fmt.Fprintf(w, "signatures: %s\n", strings.Join(sigs, ", "))
			}
			if len(keys) == 0 {
				return nil
			}
			var pubs []ed25519.PublicKey
			for _, k := range keys {
				b, err := os.ReadFile(k)
				if err != nil {
					return fmt.Errorf("--key: %w", err)
				}
				pub, err := release.ParsePublicKey(b)
				if err != nil {
					return fmt.Errorf("--key %s: %w", k, err)
				}
				pubs = append(pubs, pub)
			}
			r, err := release.Verify(pubs, raw, cfgBytes)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(w, "verified: signed by %s\n", r.SignedBy)
			return err
		},
	}
	rf.register(c)
	c.Flags().StringArrayVar(&keys, "key", nil, "trusted public key (repeatable): verify as a robot would, failing unless one signed it")
	c.Flags().BoolVar(&asJSON, "json", false, "print the config (metadata and chunk index) as JSON")
	return c
}

// securityTime shows a security version as the time it is when it reads as
// one (the default, a build time), to tell which build a robot's floor is.
func securityTime(v int64) string {
	if v <= 0 {
		return " (none: every robot takes this release for a downgrade)"
	}
	return " (" + time.Unix(v, 0).UTC().Format(time.RFC3339) + ")"
}
