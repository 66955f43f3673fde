package ota

import "golang.org/x/sys/unix"

// processCost is the agent process's resource use at one moment, to tell
// operators what an install cost the robot (the armed report carries it).
// Zero when getrusage fails: the figures are informative, never a reason
// to fail an update.
type processCost struct{ cpu float64 }

func startCost() processCost {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return processCost{}
	}
	return processCost{cpu: cpuSeconds(ru)}
}

// since returns the process's peak resident memory so far, in bytes
// (Linux gives ru_maxrss in KiB), and the CPU seconds used since c.
func (c processCost) since() (maxRSS int64, cpu float64) {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0, 0
	}
	return ru.Maxrss << 10, max(0, cpuSeconds(ru)-c.cpu)
}

func cpuSeconds(ru unix.Rusage) float64 {
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}
