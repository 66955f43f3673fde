package station

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reports       *prometheus.CounterVec
	identity      *prometheus.CounterVec
	tftpTransfers *prometheus.CounterVec
	unauthorized  prometheus.Counter
	stateErrors   prometheus.Counter
}

// boardsCollector reports how many boards are at each step and status.
type boardsCollector struct {
	s    *Station
	desc *prometheus.Desc
	pend *prometheus.Desc
}

func (c boardsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc; ch <- c.pend }

func (c boardsCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ step, status string }
	counts := map[key]int{}
	c.s.mu.Lock()
	for _, b := range c.s.boards {
		counts[key{b.Step, b.Status}]++
	}
	c.s.mu.Unlock()
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), k.step, k.status)
	}
	ch <- prometheus.MustNewConstMetric(c.pend, prometheus.GaugeValue, float64(c.s.outbox.Status().Pending))
}

func newMetrics(reg prometheus.Registerer, s *Station) (*metrics, error) {
	m := &metrics{
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lekiwi_netboot_station_reports_total",
			Help: "Hardware reports received, by outcome (matched, held)."}, []string{"result"}),
		identity: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lekiwi_netboot_station_identity_requests_total",
			Help: "Identity requests to control, by outcome (ok, unreachable, refused, error)."}, []string{"result"}),
		tftpTransfers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lekiwi_netboot_station_tftp_transfers_total",
			Help: "TFTP read requests as the station saw them, by result."}, []string{"result"}),
		unauthorized: prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_netboot_station_unauthorized_total",
			Help: "Board API calls with an unknown board token."}),
		stateErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_netboot_station_state_errors_total",
			Help: "Failures to save a board's state or queue an event (see the log)."}),
	}
	if reg == nil {
		return m, nil
	}
	bc := boardsCollector{s: s,
		desc: prometheus.NewDesc("lekiwi_netboot_station_boards", "Boards by step and status.", []string{"step", "status"}, nil),
		pend: prometheus.NewDesc("lekiwi_netboot_station_events_pending", "Events queued for control.", nil, nil)}
	for _, c := range []prometheus.Collector{m.reports, m.identity, m.tftpTransfers, m.unauthorized, m.stateErrors, bc} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("station: registering metrics: %w", err)
		}
	}
	return m, nil
}
