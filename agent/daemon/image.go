package daemon

import (
	"errors"
	"io/fs"
	"log/slog"

	"github.com/lekiwi/heartbeat/image/layout"
)

// runningImage reads the running image's metadata (image.json at path),
// once per start, for hello, the profile and updates. A system that
// `provision image build` did not make (a laptop, a hand-made SD card) has
// none: nil, and a debug line. A file that cannot be read or parsed is
// worth a warning, but no reason to stop the agent: nil too, and hello
// then names no image.
func runningImage(path string, log *slog.Logger) *layout.ImageInfo {
	if path == "" {
		return nil
	}
	info, err := layout.ReadImageInfo(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		log.Debug("no image metadata: not a system made by provision image build; hello names no image", "path", path)
		return nil
	case err != nil:
		log.Warn("image metadata unreadable; hello names no image", "err", err)
		return nil
	}
	return &info
}

// imageVersion is the image's release for logs ("" without image.json).
func imageVersion(img *layout.ImageInfo) string {
	if img == nil {
		return ""
	}
	return img.Version
}
