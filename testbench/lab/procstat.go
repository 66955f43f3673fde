package lab

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, 100 on every Linux architecture we run on.
const clockTicks = 100

// ProcMemory is a process's resident memory in bytes.
type ProcMemory struct {
	RSS uint64 // VmRSS now
	HWM uint64 // VmHWM: peak RSS
}

// ReadProcMemory reads /proc/<pid>/status.
func ReadProcMemory(pid int) (ProcMemory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcMemory{}, fmt.Errorf("read memory of pid %d: %w", pid, err)
	}
	var m ProcMemory
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		kb, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			m.RSS = kb * 1024
		case "VmHWM:":
			m.HWM = kb * 1024
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("pid %d: no VmRSS in /proc/%d/status", pid, pid)
	}
	return m, nil
}

// ReadProcCPU returns the CPU time (user + system) a process has used.
func ReadProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time of pid %d: %w", pid, err)
	}
	// The command name may hold spaces; fields resume after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: malformed /proc/%d/stat", pid, pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short /proc/%d/stat", pid, pid)
	}
	// After ')': state(0) ppid(1) ... utime(11) stime(12).
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("pid %d: bad utime/stime in /proc/%d/stat", pid, pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// Percentile returns the p-th percentile (0-100) of ds by nearest rank;
// ds is sorted in place.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	rank := int(p/100*float64(len(ds))+0.5) - 1
	return ds[max(0, min(rank, len(ds)-1))]
}

// MiB formats a byte count in mebibytes for reports.
func MiB(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// Millis formats a duration in milliseconds with two decimals for reports.
func Millis(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}
