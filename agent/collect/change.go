package collect

import (
	"fmt"
	"math"
	"slices"

	"github.com/lekiwi/heartbeat/protocol"
)

// Thresholds of a meaningful change. They are chosen so a robot at rest sends
// nothing between the maximum-interval refreshes, while a robot whose load,
// memory, disk or temperature actually moved is reported within one debounce
// interval.
const (
	CPUPointsThreshold    = 10.0 // percentage points of CPU use
	MemoryShareThreshold  = 0.05 // share of total memory
	DiskShareThreshold    = 0.01 // share of total disk
	TemperatureCThreshold = 2.0  // degrees Celsius
)

// Changed reports whether cur differs meaningfully from prev (the last sample
// sent) and, if so, why — the reason goes to the debug log.
func Changed(prev, cur protocol.Telemetry) (bool, string) {
	p, c := prev.Resources, cur.Resources
	if d := math.Abs(c.CPUPercent - p.CPUPercent); d >= CPUPointsThreshold {
		return true, fmt.Sprintf("cpu moved %.1f points", d)
	}
	if p.MemoryTotalBytes != c.MemoryTotalBytes {
		return true, "memory total changed"
	}
	if movedShare(p.MemoryUsedBytes, c.MemoryUsedBytes, c.MemoryTotalBytes, MemoryShareThreshold) {
		return true, "memory use moved at least 5% of total"
	}
	if p.DiskTotalBytes != c.DiskTotalBytes {
		return true, "disk total changed"
	}
	if movedShare(p.DiskUsedBytes, c.DiskUsedBytes, c.DiskTotalBytes, DiskShareThreshold) {
		return true, "disk use moved at least 1% of total"
	}
	switch {
	case (p.TemperatureC == nil) != (c.TemperatureC == nil):
		return true, "temperature appeared or vanished"
	case p.TemperatureC != nil && math.Abs(*c.TemperatureC-*p.TemperatureC) >= TemperatureCThreshold:
		return true, fmt.Sprintf("temperature moved %.1f °C", math.Abs(*c.TemperatureC-*p.TemperatureC))
	}
	if prev.Network.Hostname != cur.Network.Hostname {
		return true, "hostname changed"
	}
	if prev.Network.MAC != cur.Network.MAC {
		return true, "MAC changed"
	}
	if !sameSet(prev.Network.IPs, cur.Network.IPs) {
		return true, "IP addresses changed"
	}
	if prev.OSVersion != cur.OSVersion {
		return true, "OS version changed"
	}
	return false, ""
}

func movedShare(a, b, total uint64, share float64) bool {
	if total == 0 {
		return a != b
	}
	d := float64(max(a, b) - min(a, b))
	return d >= share*float64(total)
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}
