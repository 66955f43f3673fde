package store

import (
	"testing"

	"gopkg.in/yaml.v3"
)

// go-dqlite's app writes info.yaml through ghodss/yaml; the inputs below are
// what it wrote for three identities, and the wanted outputs what the
// rewrite produced when it used yaml.v2 (the bytes go-dqlite reads back).
func TestNodeInfoYAMLMatchesGoDqlite(t *testing.T) {
	for _, tc := range []struct {
		in, address, want string
		id                uint64
		oldAddress        string
	}{
		{"Address: 127.0.0.1:9001\nID: 1\nRole: 0\n", "10.0.0.7:9001",
			"Address: 10.0.0.7:9001\nID: 1\nRole: 0\n", 1, "127.0.0.1:9001"},
		{"Address: 127.0.0.1:9001\nID: 1\nRole: 0\n", "[::1]:9002",
			"Address: '[::1]:9002'\nID: 1\nRole: 0\n", 1, "127.0.0.1:9001"},
		{"Address: '[::1]:9001'\nID: 18446744073709551615\nRole: 0\n", "10.0.0.7:9001",
			"Address: 10.0.0.7:9001\nID: 18446744073709551615\nRole: 0\n", 18446744073709551615, "[::1]:9001"},
		{"Address: control-1.lan:9001\nID: 3297041220608546238\nRole: 2\n", "12345",
			"Address: \"12345\"\nID: 3297041220608546238\nRole: 2\n", 3297041220608546238, "control-1.lan:9001"},
	} {
		var info nodeInfo
		if err := yaml.Unmarshal([]byte(tc.in), &info); err != nil || info.ID != tc.id || info.Address != tc.oldAddress {
			t.Errorf("read %q = %+v, %v; want id %d address %s", tc.in, info, err, tc.id, tc.oldAddress)
		}
		got, err := withInfoAddress([]byte(tc.in), tc.address)
		if err != nil || string(got) != tc.want {
			t.Errorf("%q with address %s:\n got %q, %v\nwant %q", tc.in, tc.address, got, err, tc.want)
		}
	}
	if _, err := withInfoAddress([]byte("- a\n- b\n"), "x:1"); err == nil {
		t.Error("a YAML list was taken for a node identity")
	}
}
