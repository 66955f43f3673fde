package pid1

import (
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/image/layout"
)

func TestParseCmdline(t *testing.T) {
	const guid = "0d3c7a2e-51b4-4c1e-9f6a-3b2d1c0e9f8a"
	for _, tc := range []struct {
		name, cmdline string
		want          Boot
		err           string
	}{
		{name: "station", cmdline: "console=serial0,115200 console=tty1 rdinit=/init lekiwi.station=http://10.0.0.1:8080 lekiwi.token=t0k\n",
			want: Boot{Mode: Factory, StationURL: "http://10.0.0.1:8080", Token: "t0k"}},
		{name: "station wins over root", cmdline: "root=PARTUUID=" + guid + " lekiwi.station=http://s lekiwi.token=t",
			want: Boot{Mode: Factory, StationURL: "http://s", Token: "t"}},
		{name: "disk, the image's cmdline.txt", cmdline: "console=tty1 root=PARTUUID=" + guid + " rootfstype=ext4 rootwait",
			want: Boot{Mode: Root, RootPARTUUID: layout.MustParseGUID(guid), RootFSType: "ext4", ReadOnly: true, RootDelay: DefaultRootDelay, Init: DefaultInit}},
		{name: "upper-case GUID, rw last, options", cmdline: "ro root=PARTUUID=" + strings.ToUpper(guid) + ` rootfstype=btrfs "rootflags=subvol=@,compress=zstd" rw rootdelay=5 init=/lib/systemd/systemd -- ro single`,
			want: Boot{Mode: Root, RootPARTUUID: layout.MustParseGUID(guid), RootFSType: "btrfs", RootFlags: "subvol=@,compress=zstd", ReadOnly: false, RootDelay: 5 * time.Second, Init: "/lib/systemd/systemd"}},
		{name: "station without token", cmdline: "lekiwi.station=http://s", err: "no lekiwi.token="},
		{name: "device path", cmdline: "root=/dev/mmcblk0p2", err: "root=PARTUUID=<guid>"},
		{name: "MBR partuuid", cmdline: "root=PARTUUID=4e639091-02", err: "MBR disk's partition id"},
		{name: "bad guid", cmdline: "root=PARTUUID=nothex-51b4-4c1e-9f6a-3b2d1c0e9f8a", err: "root=PARTUUID=nothex"},
		{name: "bad delay", cmdline: "root=PARTUUID=" + guid + " rootdelay=soon", err: "rootdelay=soon"},
		{name: "relative init", cmdline: "root=PARTUUID=" + guid + " init=sbin/init", err: "absolute path"},
		{name: "neither", cmdline: "console=tty1 quiet", err: "neither lekiwi.station= (factory provisioning, from the netboot station) nor root=PARTUUID="},
		{name: "only after --", cmdline: "console=tty1 -- root=PARTUUID=" + guid, err: "neither"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCmdline(tc.cmdline)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want.Mode == Factory {
				got = Boot{Mode: got.Mode, StationURL: got.StationURL, Token: got.Token}
			}
			if got != tc.want {
				t.Errorf("ParseCmdline = %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestIsInit(t *testing.T) {
	for _, tc := range []struct {
		argv0 string
		pid   int
		want  bool
	}{
		{"/init", 1, true},
		{"init", 1, true},
		{"/usr/bin/lekiwi-agent", 1, false}, // init=/usr/bin/lekiwi-agent: the agent's own commands
		{"/init", 4242, false},              // someone ran /init in a shell
		{"agent", 4242, false},
	} {
		if got := IsInit(tc.argv0, tc.pid); got != tc.want {
			t.Errorf("IsInit(%q, %d) = %v, want %v", tc.argv0, tc.pid, got, tc.want)
		}
	}
}

// TestRunRefusesTheRealRoot: not PID 1, the init does nothing to the
// running system (mounting over /tmp, taking its links, moving /dev).
func TestRunRefusesTheRealRoot(t *testing.T) {
	for _, root := range []string{"", "/", "//"} {
		err := Run(t.Context(), Options{Root: root, Cmdline: "lekiwi.station=http://s lekiwi.token=t"})
		if err == nil || !strings.Contains(err.Error(), "only as PID 1") {
			t.Errorf("Run with root %q = %v, want a refusal", root, err)
		}
	}
}
