package collect

import (
	"testing"

	"github.com/lekiwi/heartbeat/protocol"
)

func TestChanged(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	const gb = 1_000_000_000 // decimal, so 5% and 1% are whole bytes
	base := protocol.Telemetry{
		Network:       protocol.Network{Hostname: "lekiwi-1", MAC: "2c:cf:67:00:00:01", IPs: []string{"10.0.0.2", "192.168.1.9"}},
		Resources:     protocol.Resources{CPUPercent: 20, MemoryUsedBytes: 2 * gb, MemoryTotalBytes: 8 * gb, DiskUsedBytes: 10 * gb, DiskTotalBytes: 100 * gb, TemperatureC: f(50)},
		OSVersion:     "Debian GNU/Linux 12 (bookworm)",
		UptimeSeconds: 100,
	}
	tests := []struct {
		name   string
		mutate func(*protocol.Telemetry)
		want   bool
	}{
		{name: "identical", mutate: func(*protocol.Telemetry) {}, want: false},
		{name: "only uptime moved", mutate: func(t *protocol.Telemetry) { t.UptimeSeconds += 3600 }, want: false},
		{name: "cpu +9.9 points", mutate: func(t *protocol.Telemetry) { t.Resources.CPUPercent = 29.9 }, want: false},
		{name: "cpu +10 points", mutate: func(t *protocol.Telemetry) { t.Resources.CPUPercent = 30 }, want: true},
		{name: "cpu -10 points", mutate: func(t *protocol.Telemetry) { t.Resources.CPUPercent = 10 }, want: true},
		{name: "memory +4.9%", mutate: func(t *protocol.Telemetry) { t.Resources.MemoryUsedBytes += 8 * gb * 49 / 1000 }, want: false},
		{name: "memory +5%", mutate: func(t *protocol.Telemetry) { t.Resources.MemoryUsedBytes += 8 * gb * 5 / 100 }, want: true},
		{name: "memory -5%", mutate: func(t *protocol.Telemetry) { t.Resources.MemoryUsedBytes -= 8 * gb * 5 / 100 }, want: true},
		{name: "memory total changed", mutate: func(t *protocol.Telemetry) { t.Resources.MemoryTotalBytes = 4 * gb }, want: true},
		{name: "disk +0.9%", mutate: func(t *protocol.Telemetry) { t.Resources.DiskUsedBytes += 100 * gb * 9 / 1000 }, want: false},
		{name: "disk +1%", mutate: func(t *protocol.Telemetry) { t.Resources.DiskUsedBytes += 100 * gb / 100 }, want: true},
		{name: "disk total changed (filesystem grown)", mutate: func(t *protocol.Telemetry) { t.Resources.DiskTotalBytes = 200 * gb }, want: true},
		{name: "temperature +1.9", mutate: func(t *protocol.Telemetry) { t.Resources.TemperatureC = f(51.9) }, want: false},
		{name: "temperature +2", mutate: func(t *protocol.Telemetry) { t.Resources.TemperatureC = f(52) }, want: true},
		{name: "temperature -2", mutate: func(t *protocol.Telemetry) { t.Resources.TemperatureC = f(48) }, want: true},
		{name: "temperature vanished", mutate: func(t *protocol.Telemetry) { t.Resources.TemperatureC = nil }, want: true},
		{name: "hostname", mutate: func(t *protocol.Telemetry) { t.Network.Hostname = "lekiwi-2" }, want: true},
		{name: "MAC", mutate: func(t *protocol.Telemetry) { t.Network.MAC = "2c:cf:67:00:00:02" }, want: true},
		{name: "IP added", mutate: func(t *protocol.Telemetry) { t.Network.IPs = append(t.Network.IPs, "10.0.0.3") }, want: true},
		{name: "IP replaced", mutate: func(t *protocol.Telemetry) { t.Network.IPs = []string{"10.0.0.2", "192.168.1.10"} }, want: true},
		{name: "IPs reordered", mutate: func(t *protocol.Telemetry) { t.Network.IPs = []string{"192.168.1.9", "10.0.0.2"} }, want: false},
		{name: "OS upgraded", mutate: func(t *protocol.Telemetry) { t.OSVersion = "Debian GNU/Linux 13 (trixie)" }, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := base
			cur.Network.IPs = append([]string(nil), base.Network.IPs...)
			tt.mutate(&cur)
			got, why := Changed(base, cur)
			if got != tt.want {
				t.Fatalf("Changed = %v (%q), want %v", got, why, tt.want)
			}
			if got && why == "" {
				t.Fatal("Changed reported a change without a reason")
			}
		})
	}
}
