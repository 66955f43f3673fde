package factory

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestKernelArgs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"console=serial0,115200 console=tty1 quiet\n", map[string]string{"console": "tty1", "quiet": ""}},
		{"lekiwi.station=http://10.0.0.1:8080 lekiwi.token=abc rdinit=/init", map[string]string{"lekiwi.station": "http://10.0.0.1:8080", "lekiwi.token": "abc", "rdinit": "/init"}},
		{`a="x y" "b=c d"  e=f=g`, map[string]string{"a": "x y", "b": "c d", "e": "f=g"}},
		{"\tx=1\x00y=2\r\n", map[string]string{"x": "1", "y": "2"}},
		{`unterminated="a b`, map[string]string{"unterminated": "a b"}},
		{`empty=""`, map[string]string{"empty": ""}},
	} {
		if got := KernelArgs(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("KernelArgs(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestKernelWordsKeepOrder(t *testing.T) {
	got := KernelWords(`ro root=PARTUUID=x "rootflags=a b" rw -- single`)
	want := []string{"ro", "root=PARTUUID=x", "rootflags=a b", "rw", "--", "single"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("KernelWords = %q, want %q", got, want)
	}
}

func TestStationFromCmdline(t *testing.T) {
	for _, tc := range []struct {
		name, cmdline, url, token, err string
	}{
		{"both", "console=tty1 lekiwi.station=http://10.0.0.1:8080 lekiwi.token=t0k\n", "http://10.0.0.1:8080", "t0k", ""},
		{"no token", "lekiwi.station=http://10.0.0.1:8080\n", "", "", "not booted by a netboot station"},
		{"neither", "console=tty1 root=/dev/mmcblk0p2\n", "", "", "pass --station and --token"},
		{"no file", "", "", "", "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proc := t.TempDir()
			if tc.cmdline != "" {
				if err := os.WriteFile(filepath.Join(proc, "cmdline"), []byte(tc.cmdline), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			u, tok, err := StationFromCmdline(proc)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || u != tc.url || tok != tc.token {
				t.Fatalf("got %q %q %v", u, tok, err)
			}
		})
	}
}

func TestCheckStationURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://10.0.0.1:8080":       "http://10.0.0.1:8080",
		"http://10.0.0.1:8080/":      "http://10.0.0.1:8080",
		"https://station.lan/f/":     "https://station.lan/f",
		"ftp://10.0.0.1/":            "",
		"10.0.0.1:8080":              "",
		"http://u:p@10.0.0.1/":       "",
		"http://10.0.0.1/?a=b":       "",
		"http://":                    "",
		"http://10.0.0.1:8080/#frag": "",
	} {
		got, err := checkStationURL(in)
		if (err == nil) != (want != "") || got != want {
			t.Errorf("checkStationURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for tok, ok := range map[string]bool{"abc-123_x.y": true, "": false, "a b": false, "a\nb": false, "é": false} {
		if err := checkToken(tok); (err == nil) != ok {
			t.Errorf("checkToken(%q) = %v", tok, err)
		}
	}
}

// FuzzKernelArgs: any bytes parse without panicking; every key and value
// comes from the input, without quotes or separators in keys.
func FuzzKernelArgs(f *testing.F) {
	for _, s := range []string{
		"console=tty1 lekiwi.station=http://10.0.0.1:8080 lekiwi.token=abc\n",
		`a="x y" "b=c d" e=f=g`, `"""=`, "\x00=\x00", "=", "a=\"b\" c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := KernelArgs(s)
		for k, v := range args {
			if strings.ContainsAny(k, "=\"") || strings.Contains(v, `"`) {
				t.Fatalf("key %q value %q from %q", k, v, s)
			}
		}
		if strings.Contains(s, `"`) || !utf8.ValidString(s) {
			return
		}
		// Without quotes it is a plain split on the separators.
		want := map[string]string{}
		for _, w := range strings.FieldsFunc(s, func(r rune) bool { return strings.ContainsRune(" \t\n\r\x00", r) }) {
			k, v, _ := strings.Cut(w, "=")
			want[k] = v
		}
		if !reflect.DeepEqual(args, want) {
			t.Fatalf("KernelArgs(%q) = %v, want %v", s, args, want)
		}
	})
}

func TestPingTimeoutFromCmdline(t *testing.T) {
	for _, c := range []struct {
		cmdline string
		want    time.Duration
		err     string
	}{
		{"console=ttyAMA0 lekiwi.station=http://x:1 lekiwi.token=t", 0, ""},
		{"lekiwi.servo_ping_timeout=500ms rdinit=/init", 500 * time.Millisecond, ""},
		{"lekiwi.servo_ping_timeout=fast", 0, `"fast": want a duration`},
		{"lekiwi.servo_ping_timeout=1m", 0, "from 1ms to 10s"},
	} {
		proc := t.TempDir()
		if err := os.WriteFile(filepath.Join(proc, "cmdline"), []byte(c.cmdline+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := PingTimeoutFromCmdline(proc)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want one saying %q", c.cmdline, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: %v, %v; want %v", c.cmdline, got, err, c.want)
		}
	}
	if d, err := PingTimeoutFromCmdline(filepath.Join(t.TempDir(), "no-proc")); d != 0 || err != nil {
		t.Errorf("without a command line: %v, %v; want 0, nil (the default)", d, err)
	}
}
