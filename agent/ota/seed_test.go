package ota_test

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/lekiwi/heartbeat/agent/bootctl"
	"github.com/lekiwi/heartbeat/agent/bootctl/bootctltest/powercut"
	"github.com/lekiwi/heartbeat/agent/ota"
	"github.com/lekiwi/heartbeat/cloudinit"
	"github.com/lekiwi/heartbeat/image/customize"
	"github.com/lekiwi/heartbeat/image/fat"
	"github.com/lekiwi/heartbeat/image/layout"
)

func readBootFile(t testing.TB, d io.ReaderAt, plan *layout.Plan, part int, name string) string {
	t.Helper()
	p := plan.Part(part)
	fsys, err := fat.Open(io.NewSectionReader(d, p.Start, p.Size), p.Size)
	must(t, "open "+p.Name, err)
	b, err := fsys.ReadFile(name)
	must(t, "read "+p.Name+"/"+name, err)
	return string(b)
}

// TestUpdateKeepsRobotSeed: a release carries the generic cloud-init seed
// of its build; after an update the new slot must still name the robot
// customize wrote into the disk (instance id, host name), or the robot
// would come up as a fresh, unnamed instance.
func TestUpdateKeepsRobotSeed(t *testing.T) {
	f := getFixture(t)
	ctx := context.Background()
	factory := powercut.NewDevice(f.disk1(t), powercut.Fault{})
	must(t, "customize", customize.ApplyTo(factory, factory.Size(), "robot disk",
		customize.Robot{RobotID: "lk-0042", Hostname: "lekiwi-kitchen", EnrollToken: "token"}))
	dev := powercut.NewDevice(factory.Current(), powercut.Fault{})

	meta := readBootFile(t, dev, f.plan, layout.BootA, cloudinit.MetaDataFile)
	if !strings.Contains(meta, "lk-0042") || !strings.Contains(meta, "lekiwi-kitchen") {
		t.Fatalf("customized boot_a meta-data does not name the robot:\n%s", meta)
	}

	r, err := newRobot(dev, f.plan, t.TempDir())
	must(t, "robot", err)
	must(t, "power on", r.boot(bootctl.A, false))
	must(t, "install", r.agent(t, ota.DirSource{}, nil, f.key).Install(ctx, f.args()))
	if got, want := r.states(), []string{"downloading", "writing", "verifying", "armed"}; !slices.Equal(got, want) {
		t.Fatalf("reported %v, want %v", got, want)
	}
	for _, name := range []string{cloudinit.MetaDataFile, cloudinit.UserDataFile, cloudinit.NetworkConfigFile} {
		a := readBootFile(t, dev, f.plan, layout.BootA, name)
		b := readBootFile(t, dev, f.plan, layout.BootB, name)
		if a != b {
			t.Errorf("after the update boot_b/%s differs from the robot's boot_a/%s", name, name)
		}
	}
	if got := readBootFile(t, dev, f.plan, layout.BootB, cloudinit.MetaDataFile); !strings.Contains(got, "lk-0042") {
		t.Fatalf("the new slot's meta-data does not name the robot:\n%s", got)
	}

	// The trial boots the new slot with the robot's seed and commits.
	must(t, "trial boot", r.boot(bootctl.B, true))
	out, err := r.agent(t, ota.DirSource{}, func(context.Context) error { return nil }, f.key).OnStart(ctx)
	must(t, "on start", err)
	if out.State != "committed" {
		t.Fatalf("outcome %+v", out)
	}
}
