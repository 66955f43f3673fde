package collect

import (
	"time"

	"github.com/lekiwi/heartbeat/image/layout"
	"github.com/lekiwi/heartbeat/protocol"
)

// Image is what hello announces about the running image, from its
// image.json (layout.ReadImageInfo): release, profile, build time and
// disk seed. The system slot carries its own image.json, so after an
// update's reboot the agent reads the new release's.
func Image(info layout.ImageInfo) *protocol.ImageInfo {
	img := &protocol.ImageInfo{Version: info.Version, Profile: info.Profile, Seed: info.Seed}
	if info.Created > 0 {
		img.Created = time.Unix(info.Created, 0).UTC()
	}
	return img
}
