package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/netboot/dhcp"
	"github.com/lekiwi/heartbeat/netboot/station"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	root := newRoot(&out, &out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestHelpTeaches(t *testing.T) {
	out, err := run(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"BOOT_ORDER", "layer-2", "issue-node", "netboot serve", "netboot status"} {
		if !strings.Contains(out, want) {
			t.Errorf("netboot --help does not mention %q", want)
		}
	}
}

func TestServeFlags(t *testing.T) {
	base := serveFlags{serverIP: "10.0.0.5", bootDir: "/b", image: "/i.img", stateDir: "/s", control: "https://c:8443",
		cert: "c", key: "k", ca: "ca", httpAddr: ":8080", dhcpMode: "proxy", pxePort: true, subnetMask: "255.255.255.0"}
	for _, c := range []struct {
		name    string
		mod     func(*serveFlags)
		wantErr string
		check   func(station.Config) bool
	}{
		{"proxy", func(*serveFlags) {}, "", func(c station.Config) bool {
			return c.StationURL == "http://10.0.0.5:8080" && c.DHCP.Mode == dhcp.ModeProxy && c.DHCP.PXEPort == dhcp.PXEPort
		}},
		{"full", func(f *serveFlags) { f.dhcpMode, f.poolStart, f.poolEnd = "full", "10.0.0.100", "10.0.0.200" }, "", func(c station.Config) bool {
			return c.DHCP.Mode == dhcp.ModeFull && c.DHCP.LeaseFile == "/s/leases.json" && c.DHCP.PoolEnd.String() == "10.0.0.200"
		}},
		{"no dhcp", func(f *serveFlags) { f.noDHCP = true }, "", func(c station.Config) bool { return c.DHCP == nil }},
		{"missing", func(f *serveFlags) { f.image, f.ca = "", "" }, "missing [--ca --image]", nil},
		{"ipv6", func(f *serveFlags) { f.serverIP = "fe80::1" }, "IPv4", nil},
		{"full without pool", func(f *serveFlags) { f.dhcpMode = "full" }, "--pool-start", nil},
		{"bad mode", func(f *serveFlags) { f.dhcpMode = "relay" }, "want proxy or full", nil},
		{"port 0", func(f *serveFlags) { f.httpAddr = ":0" }, "fixed port", nil},
		{"profile images", func(f *serveFlags) { f.profileImages = []string{"lekiwi=/l.img", "xle=/x.img"} }, "", func(c station.Config) bool {
			return c.ProfileImages["lekiwi"] == "/l.img" && c.ProfileImages["xle"] == "/x.img" && len(c.ProfileImages) == 2
		}},
		{"profile image without path", func(f *serveFlags) { f.profileImages = []string{"xle"} }, "PROFILE=PATH", nil},
		{"profile image twice", func(f *serveFlags) { f.profileImages = []string{"xle=/a", "xle=/b"} }, "given twice", nil},
	} {
		f := base
		c.mod(&f)
		cfg, err := f.config()
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: %v, want an error with %q", c.name, err, c.wantErr)
			}
			continue
		}
		if err != nil || !c.check(cfg) {
			t.Errorf("%s: %+v %v", c.name, cfg, err)
		}
	}
}

func TestStatusTable(t *testing.T) {
	now := time.Now()
	rep := station.StatusReport{Boards: []station.BoardStatus{
		{Serial: "d83add01", Model: "Raspberry Pi 5 8GB", Step: "install", Status: "started", Profile: "lekiwi", RobotID: "lekiwi-d83add01", Done: 50, Total: 200, LastSeen: now},
		{Serial: "c0ffee00", Step: "match", Status: "held", Reason: "found 8 motors on /dev/ttyACM0", LastSeen: now},
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != station.StatusPath {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(rep)
	}))
	defer srv.Close()
	out, err := run(t, "status", "--station", srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"d83add01", "started 25%", "lekiwi-d83add01", "held", "found 8 motors on /dev/ttyACM0", "2 board(s)"} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
	out, err = run(t, "status", "--station", srv.URL, "-o", "json")
	var back station.StatusReport
	if err != nil || json.Unmarshal([]byte(out), &back) != nil || len(back.Boards) != 2 {
		t.Fatalf("json: %v %s", err, out)
	}
	srv.Close()
	if _, err := run(t, "status", "--station", srv.URL); err == nil || !strings.Contains(err.Error(), "netboot serve") {
		t.Fatalf("station down: %v", err)
	}
}
