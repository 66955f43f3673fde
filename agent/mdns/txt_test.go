package mdns

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestEncodeTXT(t *testing.T) {
	tests := []struct {
		name                  string
		id, typ, agent, osVer string
		want                  []string // as bytes on the wire
		wantErr               string
	}{
		{name: "all", id: "xle-7", typ: "xle", agent: "1.4.0", osVer: "bookworm 12", want: []string{"txtvers=1", "id=xle-7", "type=xle", "agent=1.4.0", "os=bookworm 12"}},
		{name: "empty versions left out", id: "lekiwi-1", typ: "lekiwi", want: []string{"txtvers=1", "id=lekiwi-1", "type=lekiwi"}},
		{name: "quotes, backslashes and = in values survive", id: "x", typ: "xle", agent: `a\b"c=d`, want: []string{"txtvers=1", "id=x", "type=xle", `agent=a\b"c=d`}},
		{name: "too long", id: "x", typ: "xle", osVer: strings.Repeat("v", 253), wantErr: "over the 255 byte limit"},
		{name: "exactly 255 bytes fits", id: "x", typ: "xle", osVer: strings.Repeat("v", 252), want: []string{"txtvers=1", "id=x", "type=xle", "os=" + strings.Repeat("v", 252)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			txt, err := EncodeTXT(tt.id, tt.typ, tt.agent, tt.osVer)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// What goes on the wire is what we meant: pack and read the
			// character-strings back raw.
			rr := &dns.TXT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: txt}
			buf := make([]byte, 2048)
			off, err := dns.PackRR(rr, buf, 0, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for rd := buf[11:off]; len(rd) > 0; {
				n := int(rd[0])
				got = append(got, string(rd[1:1+n]))
				rd = rd[1+n:]
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Fatalf("wire strings = %q, want %q", got, tt.want)
			}
		})
	}
}
