package base

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func openOCIRemote(ctx context.Context, ref string, o Options, c *cleaner) (*Base, error) {
	var opts []name.Option
	if o.Insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("not a file and not an OCI reference (registry/repository:tag): %w", err)
	}
	plat, err := v1.ParsePlatform(o.Platform)
	if err != nil {
		return nil, fmt.Errorf("platform %q: %w", o.Platform, err)
	}
	o.progressf("pulling %s for %s", r, plat)
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithPlatform(*plat))
	if err != nil {
		return nil, fmt.Errorf("pull %s for %s (is the registry reachable, and does the image have a %s variant?): %w", r, plat, plat, err)
	}
	return ociBase(ctx, r.String(), img, *plat, o, c)
}

func openOCILayout(ctx context.Context, dir string, o Options, c *cleaner) (*Base, error) {
	plat, err := v1.ParsePlatform(o.Platform)
	if err != nil {
		return nil, fmt.Errorf("platform %q: %w", o.Platform, err)
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("OCI layout: %w", err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	img, err := imageForPlatform(idx, *plat, 0)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	return ociBase(ctx, "oci-layout:"+dir, img, *plat, o, c)
}

// imageForPlatform finds the image for plat in an index, descending into
// nested indexes (an OCI layout's index.json usually points at one).
func imageForPlatform(idx v1.ImageIndex, plat v1.Platform, depth int) (v1.Image, error) {
	if depth > 4 {
		return nil, errors.New("image indexes nested too deep")
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var seen []string
	var single v1.Image
	for _, d := range m.Manifests {
		switch {
		case d.MediaType.IsIndex():
			child, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, err
			}
			if img, err := imageForPlatform(child, plat, depth+1); err == nil {
				return img, nil
			}
		case d.MediaType.IsImage():
			if d.Platform == nil {
				// No platform in the descriptor: judge by the config below.
				if single == nil {
					if single, err = idx.Image(d.Digest); err != nil {
						return nil, err
					}
				}
				continue
			}
			seen = append(seen, d.Platform.String())
			if d.Platform.Satisfies(plat) {
				return idx.Image(d.Digest)
			}
		}
	}
	if single != nil {
		return single, nil
	}
	return nil, fmt.Errorf("no image for platform %s (found %v)", plat, seen)
}

// ociBase flattens an image's layers (whiteouts honoured) into a tree.
func ociBase(ctx context.Context, ref string, img v1.Image, plat v1.Platform, o Options, c *cleaner) (*Base, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	if cfg.OS != plat.OS || cfg.Architecture != plat.Architecture {
		return nil, fmt.Errorf("image is %s/%s, not %s: push a %s image or a multi-platform index that has one",
			cfg.OS, cfg.Architecture, plat, plat)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("image digest: %w", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("image layers: %w", err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	root, _, err := importTar(ctx, rc, o, c)
	if err != nil {
		return nil, fmt.Errorf("flatten layers: %w", err)
	}
	o.progressf("flattened %s: %d layers, %s of files", ref, len(layers), humanSize(root.ContentSize()))
	return &Base{Kind: KindOCI, Root: root, Arch: cfg.Architecture,
		Description: fmt.Sprintf("OCI image %s (%s, %s/%s, %d layers)", ref, digest, cfg.OS, cfg.Architecture, len(layers))}, nil
}
