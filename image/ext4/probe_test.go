package ext4

import (
	"bytes"
	"os"
	"testing"

	"github.com/lekiwi/heartbeat/image/fsimagetest"
)

func TestHasSuperblock(t *testing.T) {
	img, err := os.ReadFile(fsimagetest.WriteFS(t, Write, 16<<20, sampleTree(t), Params{Time: epoch}))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := HasSuperblock(bytes.NewReader(img)); !ok || err != nil {
		t.Errorf("written ext4: %v, %v; want true", ok, err)
	}
	if ok, err := HasSuperblock(bytes.NewReader(make([]byte, 4096))); ok || err != nil {
		t.Errorf("zeros: %v, %v; want false without error", ok, err)
	}
	if _, err := HasSuperblock(bytes.NewReader(img[:1024])); err == nil {
		t.Error("a partition too short for a superblock gave no error")
	}
}
