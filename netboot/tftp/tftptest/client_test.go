package tftptest

import "testing"

func TestParseOACK(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
		ok   bool
	}{
		{"\x00\x06tsize\x005000\x00blksize\x001468\x00", map[string]string{"tsize": "5000", "blksize": "1468"}, true},
		{"\x00\x06BLKSIZE\x001024\x00", map[string]string{"blksize": "1024"}, true},
		{"\x00\x06", map[string]string{}, true},
		{"\x00\x03tsize\x005\x00", nil, false},               // DATA, not OACK
		{"\x00", nil, false},                                 // short
		{"\x00\x06tsize\x005", nil, false},                   // value not terminated
		{"\x00\x06tsize", nil, false},                        // name not terminated
		{"\x00\x06\x005\x00", nil, false},                    // empty name
		{"\x00\x06tsize\x001\x00tsize\x002\x00", nil, false}, // repeated
	}
	for _, tt := range tests {
		got, err := ParseOACK([]byte(tt.in))
		if (err == nil) != tt.ok {
			t.Errorf("ParseOACK(%q) error %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if !tt.ok {
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("ParseOACK(%q) = %v, want %v", tt.in, got, tt.want)
		}
		for k, v := range tt.want {
			if got[k] != v {
				t.Errorf("ParseOACK(%q)[%q] = %q, want %q", tt.in, k, got[k], v)
			}
		}
	}
}

func FuzzParseOACK(f *testing.F) {
	f.Add([]byte("\x00\x06tsize\x005000\x00blksize\x001468\x00"))
	f.Add([]byte("\x00\x06tsize\x00"))
	f.Add([]byte("\x00\x05\x00\x01oops\x00"))
	f.Fuzz(func(t *testing.T, p []byte) {
		opts, err := ParseOACK(p)
		if err != nil {
			return
		}
		// Accepted packets re-encode to the same length: every byte was
		// accounted for by a NUL-terminated name or value.
		n := 2
		for k, v := range opts {
			if k == "" {
				t.Fatalf("empty option name accepted from %q", p)
			}
			n += len(k) + len(v) + 2
		}
		if n != len(p) {
			t.Fatalf("ParseOACK(%q) = %v accounts for %d of %d bytes", p, opts, n, len(p))
		}
	})
}
