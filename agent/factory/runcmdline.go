package factory

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/protocol"
)

// maxCmdline bounds what is read of /proc/cmdline (the kernel's own limit is
// a few KiB; anything far longer is not a kernel command line).
const maxCmdline = 64 << 10

// KernelWords splits a kernel command line into its arguments the way the
// kernel does: on white space, with double quotes keeping spaces inside a
// value (`key="a b"`, also `"key=a b"`), the quotes themselves dropped.
// The order is kept, for arguments whose last occurrence wins over another
// (ro and rw).
func KernelWords(cmdline string) []string {
	var words []string
	var word strings.Builder
	inQuote, inWord := false, false
	flush := func() {
		if inWord {
			words = append(words, word.String())
		}
		word.Reset()
		inWord = false
	}
	for _, c := range cmdline {
		switch {
		case c == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0):
			flush()
		default:
			word.WriteRune(c)
			inWord = true
		}
	}
	flush()
	return words
}

// KernelArgs parses a kernel command line (KernelWords) into its key=value
// arguments. Bare flags map to "". When a key repeats, the last one wins, as
// for the kernel's own parameters.
func KernelArgs(cmdline string) map[string]string {
	args := map[string]string{}
	for _, w := range KernelWords(cmdline) {
		k, v, _ := strings.Cut(w, "=")
		args[k] = v
	}
	return args
}

// readCmdline reads procRoot/cmdline into its key=value arguments.
func readCmdline(procRoot string) (map[string]string, string, error) {
	path := filepath.Join(procRoot, "cmdline")
	f, err := os.Open(path)
	if err != nil {
		return nil, path, err
	}
	defer f.Close()
	buf := make([]byte, maxCmdline)
	n, _ := f.Read(buf)
	return KernelArgs(string(buf[:n])), path, nil
}

// PingTimeoutFromCmdline reads protocol.KernelArgPingTimeout from
// procRoot/cmdline: 0 when it is not there (or there is no command line),
// an error when it is not a duration between 1 ms and 10 s.
func PingTimeoutFromCmdline(procRoot string) (time.Duration, error) {
	args, path, err := readCmdline(procRoot)
	if err != nil {
		return 0, nil
	}
	v, ok := args[protocol.KernelArgPingTimeout]
	if !ok {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Millisecond || d > 10*time.Second {
		return 0, fmt.Errorf("%s: %s=%q: want a duration from 1ms to 10s, e.g. 50ms", path, protocol.KernelArgPingTimeout, v)
	}
	return d, nil
}

// StationFromCmdline reads the station URL and the board token the station
// put on the kernel command line it served (protocol.KernelArgStation,
// protocol.KernelArgToken) from procRoot/cmdline.
func StationFromCmdline(procRoot string) (stationURL, token string, err error) {
	args, path, err := readCmdline(procRoot)
	if err != nil {
		return "", "", fmt.Errorf("read the kernel command line for the station URL: %w (pass --station and --token)", err)
	}
	stationURL, token = args[protocol.KernelArgStation], args[protocol.KernelArgToken]
	if stationURL == "" || token == "" {
		return "", "", fmt.Errorf("%s has no %s=… and %s=…: this board was not booted by a netboot station (pass --station and --token to run by hand)", path, protocol.KernelArgStation, protocol.KernelArgToken)
	}
	return stationURL, token, nil
}

// checkStationURL accepts http(s)://host[:port] with an optional path
// prefix, and returns it without a trailing slash.
func checkStationURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("station URL %q: %w", s, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("station URL %q: want http://host:port (the station's address on the factory LAN)", s)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// checkToken refuses a token that cannot go into an HTTP header.
func checkToken(t string) error {
	if t == "" {
		return fmt.Errorf("board token is empty")
	}
	for _, c := range t {
		if c <= ' ' || c >= 0x7f {
			return fmt.Errorf("board token has a character %q that cannot be sent in a header", c)
		}
	}
	return nil
}
