// Package sqlprof builds and reads a statement-level SQLite profiler for
// control nodes under benchmark.
//
// dqlite runs every member's SQL on the leader, and perf only shows the
// leader's time as "libsqlite3". The profiler (csrc/sqlprof.c) is an
// LD_PRELOAD library that measures the CPU time of sqlite3_prepare_v2 and
// sqlite3_step per statement text and rewrites a TSV every 10 s. Build compiles it with the
// machine's C compiler; Env is what a member's process needs to load it;
// Read parses what it wrote.
package sqlprof

import (
	"bufio"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

//go:embed csrc/sqlprof.c
var source []byte

// Build compiles the profiler into dir and returns the library's path.
func Build(dir string) (string, error) {
	src := filepath.Join(dir, "sqlprof.c")
	if err := os.WriteFile(src, source, 0o644); err != nil {
		return "", err
	}
	lib := filepath.Join(dir, "sqlprof.so")
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	out, err := exec.Command(cc, "-O2", "-shared", "-fPIC", "-o", lib, src, "-lsqlite3", "-ldl", "-lpthread").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build the SQL profiler (needs a C compiler and libsqlite3-dev): %w\n%s", err, out)
	}
	return lib, nil
}

// Env is the environment that makes a process load lib and write its
// profile to out.
func Env(lib, out string) []string {
	return []string{"LD_PRELOAD=" + lib, "SQLPROF_OUT=" + out}
}

// Statement is one line of a profile. Times are the CPU time of the
// thread that ran them.
type Statement struct {
	SQL      string
	Step     time.Duration
	Prepare  time.Duration
	Steps    uint64
	Rows     uint64
	Prepares uint64
}

// Total is the statement's CPU time in SQLite.
func (s Statement) Total() time.Duration { return s.Step + s.Prepare }

// Read parses a profile, most expensive statement first.
func Read(path string) ([]Statement, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Statement
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if line == 1 {
			continue // header
		}
		fields := strings.SplitN(sc.Text(), "\t", 6)
		if len(fields) != 6 {
			return nil, fmt.Errorf("%s:%d: %d fields, want 6", path, line, len(fields))
		}
		var n [5]uint64
		for i := range n {
			v, err := strconv.ParseUint(fields[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: field %d: %w", path, line, i+1, err)
			}
			n[i] = v
		}
		out = append(out, Statement{SQL: fields[5], Step: time.Duration(n[0]) * time.Millisecond, Prepare: time.Duration(n[1]) * time.Millisecond,
			Steps: n[2], Rows: n[3], Prepares: n[4]})
	}
	return out, sc.Err()
}
