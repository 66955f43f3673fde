package identity

import (
	"strings"
	"testing"
)

func TestParseBatch(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []Row  // when no error
		err      string // substring of the error
	}{
		{name: "tokens", in: "robot_id,enroll_token\nkiwi-1,lke_a\nkiwi-2,lke_b\n",
			want: []Row{{Line: 2, RobotID: "kiwi-1", EnrollToken: "lke_a"}, {Line: 3, RobotID: "kiwi-2", EnrollToken: "lke_b"}}},
		{name: "any column order, spaces, comments, BOM, CRLF", in: "\ufeffcert, key ,Robot_ID,hostname,notes\r\n# made by Ann\r\n certs/k1.pem,keys/k1.pem,kiwi-1,,left bench\r\n\r\nc2,k2,kiwi-2,lab-2,\r\n",
			want: []Row{{Line: 3, RobotID: "kiwi-1", Cert: "certs/k1.pem", Key: "keys/k1.pem"}, {Line: 5, RobotID: "kiwi-2", Hostname: "lab-2", Cert: "c2", Key: "k2"}}},
		{name: "token or cert per row", in: "robot_id,enroll_token,cert,key,ca\nkiwi-1,lke_a,,,\nkiwi-2,,c,k,ca.pem\n",
			want: []Row{{Line: 2, RobotID: "kiwi-1", EnrollToken: "lke_a"}, {Line: 3, RobotID: "kiwi-2", Cert: "c", Key: "k", CA: "ca.pem"}}},
		{name: "empty", in: "", err: "empty batch file"},
		{name: "header only", in: "robot_id,enroll_token\n", err: "no robots"},
		{name: "no robot_id", in: "hostname,enroll_token\nh,t\n", err: "line 1: no robot_id column"},
		{name: "unknown column", in: "robot_id,enrol_token\nk,t\n", err: `line 1: unknown column "enrol_token"`},
		{name: "column twice", in: "robot_id,enroll_token,ROBOT_ID\nk,t,k\n", err: `line 1: column "robot_id" appears twice`},
		{name: "cert without key column", in: "robot_id,cert\nk,c\n", err: "line 1: give both cert and key"},
		{name: "no credential column", in: "robot_id,hostname\nk,h\n", err: "line 1: no enroll_token column"},
		{name: "bad robot id", in: "robot_id,enroll_token\nkiwi-1,a\nKiwi_2,b\n", err: "line 3: robot id \"Kiwi_2\" is not a DNS label"},
		{name: "bad hostname", in: "robot_id,hostname,enroll_token\nkiwi-1,-x,a\n", err: "line 2: hostname"},
		{name: "no credential in row", in: "robot_id,enroll_token,cert,key\nkiwi-1,,,\n", err: "line 2: robot kiwi-1 has neither"},
		{name: "cert without key in row", in: "robot_id,cert,key\nkiwi-1,c,\n", err: "line 2: robot kiwi-1 has only one of cert and key"},
		{name: "token with space", in: "robot_id,enroll_token\nkiwi-1,\"a b\"\n", err: "line 2: robot kiwi-1: enrollment token has a space"},
		{name: "token too long", in: "robot_id,enroll_token\nkiwi-1," + strings.Repeat("a", MaxTokenLen+1) + "\n", err: "line 2: robot kiwi-1: enrollment token longer"},
		{name: "duplicate robot", in: "robot_id,enroll_token\nkiwi-1,a\nkiwi-2,b\nkiwi-1,c\n", err: "line 4: robot_id kiwi-1 is already on line 2"},
		{name: "duplicate token, kept secret", in: "robot_id,enroll_token\nkiwi-1,lke_secret\nkiwi-2,lke_secret\n", err: "line 3: enroll_token (secret) is already on line 2"},
		{name: "duplicate hostname", in: "robot_id,hostname,enroll_token\nkiwi-1,h,a\nkiwi-2,h,b\n", err: "line 3: hostname h is already on line 2"},
		{name: "duplicate key file", in: "robot_id,cert,key\nkiwi-1,c1,k\nkiwi-2,c2,k\n", err: "line 3: key k is already on line 2"},
		{name: "short row", in: "robot_id,enroll_token\nkiwi-1,a\nkiwi-2\n", err: "line 3"},
		{name: "bad quote", in: "robot_id,enroll_token\nkiwi-1,\"a\n", err: "line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := ParseBatch(strings.NewReader(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				if strings.Contains(tc.in, "lke_secret") && strings.Contains(err.Error(), "lke_secret") {
					t.Fatalf("error shows the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != len(tc.want) {
				t.Fatalf("rows %+v, want %+v", rows, tc.want)
			}
			for i := range rows {
				if rows[i] != tc.want[i] {
					t.Errorf("row %d = %+v, want %+v", i, rows[i], tc.want[i])
				}
			}
		})
	}
}

func FuzzParseBatch(f *testing.F) {
	f.Add("robot_id,enroll_token\nkiwi-1,lke_a\n")
	f.Add("robot_id,hostname,cert,key,ca,notes\nkiwi-1,h,c,k,ca,\"x,y\"\n")
	f.Fuzz(func(t *testing.T, in string) {
		rows, err := ParseBatch(strings.NewReader(in))
		if err != nil {
			return
		}
		// Whatever is accepted is a usable, distinct identity per row.
		seen := map[string]bool{}
		for _, r := range rows {
			if err := checkRow(r); err != nil {
				t.Fatalf("accepted row %+v: %v", r, err)
			}
			if seen[r.RobotID] {
				t.Fatalf("accepted robot %s twice", r.RobotID)
			}
			seen[r.RobotID] = true
			if r.Line < 2 {
				t.Fatalf("row %+v on line %d, before the header", r, r.Line)
			}
		}
	})
}
