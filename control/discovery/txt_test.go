package discovery

import (
	"maps"
	"strings"
	"testing"
)

func txtRecord(strs ...string) []byte {
	var b []byte
	for _, s := range strs {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	return b
}

func TestParseTXT(t *testing.T) {
	tests := []struct {
		name    string
		rdata   []byte
		want    map[string]string
		wantErr string
	}{
		{name: "robot", rdata: txtRecord("txtvers=1", "id=xle-7", "type=xle", "agent=1.4.0", "os=bookworm 12"),
			want: map[string]string{"txtvers": "1", "id": "xle-7", "type": "xle", "agent": "1.4.0", "os": "bookworm 12"}},
		{name: "empty record (one zero byte)", rdata: []byte{0}, want: map[string]string{}},
		{name: "no data", rdata: nil, want: map[string]string{}},
		{name: "keys case-insensitive, first wins", rdata: txtRecord("ID=a", "id=b"), want: map[string]string{"id": "a"}},
		{name: "boolean and empty value", rdata: txtRecord("flag", "empty="), want: map[string]string{"flag": "", "empty": ""}},
		{name: "value keeps = and bytes", rdata: txtRecord("k=a=b\x00\xff\"\\"), want: map[string]string{"k": "a=b\x00\xff\"\\"}},
		{name: "empty key skipped", rdata: txtRecord("=x", "id=1"), want: map[string]string{"id": "1"}},
		{name: "non-printable key skipped", rdata: txtRecord("i\x01d=x", "id=1"), want: map[string]string{"id": "1"}},
		{name: "truncated", rdata: []byte{5, 'a', 'b'}, wantErr: "truncated"},
		{name: "too many keys", rdata: func() []byte {
			var s []string
			for i := range maxTXTPairs + 1 {
				s = append(s, strings.Repeat("k", i+1))
			}
			return txtRecord(s...)
		}(), wantErr: "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTXT(tt.rdata)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !maps.Equal(got, tt.want) {
				t.Fatalf("ParseTXT = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// FuzzParseTXT: never panics, keys are lowercase printable ASCII without
// '=', and every pair comes from one string of the record.
func FuzzParseTXT(f *testing.F) {
	f.Add(txtRecord("txtvers=1", "id=xle-7", "type=xle", "agent=1.4.0", "os=12"))
	f.Add([]byte{0})
	f.Add([]byte{3, 'a', '=', 'b', 200})
	f.Fuzz(func(t *testing.T, rdata []byte) {
		kv, err := ParseTXT(rdata)
		if err != nil {
			return
		}
		if len(kv) > maxTXTPairs {
			t.Fatalf("%d pairs, limit %d", len(kv), maxTXTPairs)
		}
		for k, v := range kv {
			if k == "" || k != strings.ToLower(k) || strings.Contains(k, "=") || !printableASCII(k) {
				t.Fatalf("bad key %q", k)
			}
			if !strings.Contains(strings.ToLower(string(rdata)), k+"="+strings.ToLower(v)) && !(v == "" && strings.Contains(strings.ToLower(string(rdata)), k)) {
				t.Fatalf("pair %q=%q not in the record %q", k, v, rdata)
			}
		}
	})
}
