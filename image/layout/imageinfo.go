package layout

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// The image's own metadata: `provision image build` writes it into the
// root filesystem (and, as BootInfoFile, onto each boot slot); the agent
// reads it to tell control which release it runs, which profile it was
// built for, and what its updates must match. Both take the names and the
// shape from here, so the agent needs nothing of the image builder.
const (
	// ImageInfoPath is the metadata file, relative to the root
	// filesystem's root (/etc/lekiwi/image.json on a robot).
	ImageInfoPath = "etc/lekiwi/image.json"
	// BootInfoFile is the same metadata in each boot slot's root.
	BootInfoFile = "lekiwi-image.json"
)

// ImageInfo is the content of image.json.
type ImageInfo struct {
	Version     string `json:"version"`
	Profile     string `json:"profile"`
	Base        string `json:"base"`
	BaseArch    string `json:"base_arch,omitempty"`
	Created     int64  `json:"created"` // SOURCE_DATE_EPOCH, Unix seconds
	AgentSHA256 string `json:"agent_sha256,omitempty"`
	// Seed (hex) is what the disk's partition GUIDs and filesystem ids
	// derive from: the same for every build of a profile, so a later
	// build's slots fit an earlier build's disk.
	Seed string `json:"seed"`
}

// ParseImageInfo decodes image.json. Fields it does not know are ignored (a
// newer builder may add some); a file that is not a JSON object, or names
// no profile, is an error: every image the builder makes has one.
func ParseImageInfo(b []byte) (ImageInfo, error) {
	var info ImageInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return ImageInfo{}, fmt.Errorf("image metadata is not JSON: %w", err)
	}
	if info.Profile == "" {
		return ImageInfo{}, errors.New("image metadata names no profile")
	}
	return info, nil
}

// ReadImageInfo reads and parses the image.json at path. A missing file is
// an error wrapping fs.ErrNotExist: the system was not made by `provision
// image build`.
func ReadImageInfo(path string) (ImageInfo, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("image metadata: %w", err)
	}
	info, err := ParseImageInfo(b)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("%s: %w (was the image made by provision image build?)", path, err)
	}
	return info, nil
}
