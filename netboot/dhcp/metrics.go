package dhcp

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	received      *prometheus.CounterVec // by message type
	replies       *prometheus.CounterVec // by message type
	ignored       *prometheus.CounterVec // by reason
	devices       *prometheus.CounterVec // new devices by pi=true/false
	eventsDropped prometheus.Counter
	sendErrors    prometheus.Counter
	leases        prometheus.Gauge
	replySeconds  prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "netboot_dhcp_packets_received_total", Help: "DHCP requests received, by message type."}, []string{"type"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "netboot_dhcp_replies_sent_total", Help: "DHCP replies sent, by message type."}, []string{"type"}),
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "netboot_dhcp_ignored_total", Help: "DHCP requests not answered, by reason."}, []string{"reason"}),
		devices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "netboot_dhcp_devices_seen_total", Help: "New devices seen by DHCP snooping."}, []string{"pi"}),
		eventsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "netboot_dhcp_device_events_dropped_total", Help: "DeviceSeen events dropped because the queue was full (re-sent on the device's next packet)."}),
		sendErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "netboot_dhcp_send_errors_total", Help: "DHCP replies that could not be sent."}),
		leases: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "netboot_dhcp_leases", Help: "Leases known in full mode (live or expired, kept for stickiness)."}),
		replySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "netboot_dhcp_reply_seconds", Help: "Time from receiving a request to sending its reply.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14)}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.received, m.replies, m.ignored, m.devices, m.eventsDropped, m.sendErrors, m.leases, m.replySeconds} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("dhcp: metrics already registered (one Server per Registerer): %w", err)
			}
			return nil, fmt.Errorf("dhcp: registering metrics: %w", err)
		}
	}
	return m, nil
}
