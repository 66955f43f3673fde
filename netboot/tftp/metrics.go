package tftp

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the station's TFTP counters. Labels are the fixed Kind and
// Result sets, never serials or file names, so cardinality stays constant
// however many boards boot.
type metrics struct {
	started  *prometheus.CounterVec   // kind
	finished *prometheus.CounterVec   // kind, result
	bytes    *prometheus.CounterVec   // kind
	duration *prometheus.HistogramVec // kind
	inFlight prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lekiwi_netboot_tftp_transfers_started_total",
			Help: "Read requests for which the resolver had content and sending began (probes included), by file kind."}, []string{"kind"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lekiwi_netboot_tftp_transfers_total",
			Help: "Read requests by file kind and result: completed, probe (tsize probe ended by the client, normal for the Pi bootloader), failed, not_found, rejected (invalid name)."}, []string{"kind", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lekiwi_netboot_tftp_sent_bytes_total",
			Help: "File bytes sent in TFTP DATA packets, by file kind."}, []string{"kind"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lekiwi_netboot_tftp_transfer_duration_seconds",
			Help:    "Duration of completed transfers, from read request to last ACK, by file kind.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}, []string{"kind"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lekiwi_netboot_tftp_transfers_in_flight",
			Help: "Transfers currently sending."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.started, m.finished, m.bytes, m.duration, m.inFlight} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering TFTP metrics (is a second TFTP server using the same registry?): %w", err)
		}
	}
	return m, nil
}
