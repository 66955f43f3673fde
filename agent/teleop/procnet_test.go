package teleop

import (
	"net/netip"
	"os"
	"strings"
	"testing"
)

func TestParseLine(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name, line string
		want       Socket
		wantErr    string
	}{
		{
			name: "ipv4 established",
			line: "   8: 2A01A8C0:15B3 0A01A8C0:C35C 01 00000000:00000000 00:00000000 00000000  1000        0 2001 1 0000000000000000 100 0 0 10 0",
			want: Socket{Local: ap("192.168.1.42:5555"), Remote: ap("192.168.1.10:50012"), State: StateEstablished, UID: 1000, Inode: 2001},
		},
		{
			name: "ipv4 listen lowercase hex",
			line: "0: 0100007f:0cea 00000000:0000 0a 00000000:00000000 00:00000000 00000000 0 0 40176 1 0000000000000000 100 0 0 10 0",
			want: Socket{Local: ap("127.0.0.1:3306"), Remote: ap("0.0.0.0:0"), State: StateListen, Inode: 40176},
		},
		{
			name: "ipv6 v4-mapped is unmapped",
			line: "3: 0000000000000000FFFF00002B01A8C0:20FB 0000000000000000FFFF00001E01A8C0:CB20 01 00000000:00000000 00:00000000 00000000 1000 0 3004 1 0 100 0 0 10 0",
			want: Socket{Local: ap("192.168.1.43:8443"), Remote: ap("192.168.1.30:52000"), State: StateEstablished, UID: 1000, Inode: 3004},
		},
		{
			name: "ipv6 global",
			line: "4: 000000FD000000000000000043000000:20FA 000000FD000000000000000030000000:CB21 01 00000000:00000000 00:00000000 00000000 1000 0 3005 1 0 100 0 0 10 0",
			want: Socket{Local: ap("[fd00::43]:8442"), Remote: ap("[fd00::30]:52001"), State: StateEstablished, UID: 1000, Inode: 3005},
		},
		{
			name: "udp line (ref, pointer, drops)",
			line: "  742: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 18553 2 0000000000000000 0",
			want: Socket{Local: ap("127.0.0.1:53"), Remote: ap("0.0.0.0:0"), State: StateClose, UID: 101, Inode: 18553},
		},
		{name: "too few fields", line: "0: 0100007F:0CEA 00000000:0000 0A", wantErr: "fields"},
		{name: "no colon", line: "0: 0100007F0CEA 00000000:0000 0A 0:0 0:0 0 0 0 1", wantErr: "no ':'"},
		{name: "bad hex", line: "0: 0100007G:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 1", wantErr: "hex digit"},
		{name: "address length", line: "0: 0100007:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 1", wantErr: "hex digits"},
		{name: "port too long", line: "0: 0100007F:0CEAA 00000000:0000 0A 0:0 0:0 0 0 0 1", wantErr: "port"},
		{name: "mixed families", line: "0: 0100007F:0CEA 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 1", wantErr: "mixed"},
		{name: "state too long", line: "0: 0100007F:0CEA 00000000:0000 0A0 0:0 0:0 0 0 0 1", wantErr: "state"},
		{name: "uid overflow", line: "0: 0100007F:0CEA 00000000:0000 0A 0:0 0:0 0 4294967296 0 1", wantErr: "overflows 32"},
		{name: "inode overflow", line: "0: 0100007F:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 18446744073709551616", wantErr: "overflows"},
		{name: "negative inode", line: "0: 0100007F:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 -1", wantErr: "decimal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLine([]byte(tt.line))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseProcNetFixtures(t *testing.T) {
	tests := []struct {
		file  string
		count int
	}{
		{"tcp_lekiwi_idle", 8},
		{"tcp_lekiwi_driven", 11},
		{"tcp6_empty", 0},
		{"tcp6_xle_driven", 6},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile("testdata/" + tt.file)
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseProcNet(data, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.count {
				t.Fatalf("%d sockets, want %d", len(got), tt.count)
			}
		})
	}
}

func TestParseProcNetErrors(t *testing.T) {
	for _, in := range []string{"", "header only", "header\n", "header\n\n  \n"} {
		if got, err := parseProcNet([]byte(in), nil); err != nil || len(got) != 0 {
			t.Errorf("%q: %v, %v; want no sockets, no error", in, got, err)
		}
	}
	_, err := parseProcNet([]byte("header\n0: 0100007F:0CEA 00000000:0000 0A 0:0 0:0 0 0 0 1\ngarbage\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("err = %v, want one naming line 3", err)
	}
}

// TestParseRealTables parses this machine's own tables: the kernel's format,
// not just our fixtures' idea of it.
func TestParseRealTables(t *testing.T) {
	for _, name := range []string{"tcp", "tcp6", "udp", "udp6"} {
		data, err := os.ReadFile("/proc/net/" + name)
		if err != nil {
			t.Skipf("no /proc/net/%s: %v", name, err)
		}
		if _, err := parseProcNet(data, nil); err != nil {
			t.Errorf("/proc/net/%s: %v", name, err)
		}
	}
}
