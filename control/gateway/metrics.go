package gateway

import "github.com/prometheus/client_golang/prometheus"

// metrics are the gateway's Prometheus series.
type metrics struct {
	connections    prometheus.Gauge
	fenced         prometheus.Gauge
	robotsOnline   prometheus.Gauge
	messages       *prometheus.CounterVec
	protocolErrors *prometheus.CounterVec
	heartbeatLag   prometheus.Histogram
	eventLag       prometheus.Histogram
	commitBatch    prometheus.Histogram
	commitRetries  prometheus.Counter
	commitSeconds  prometheus.Histogram
	duplicates     prometheus.Counter
	pendingReads   prometheus.Counter
	denied         *prometheus.CounterVec
	handshakes     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	lagBuckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lekiwi_control_websocket_connections", Help: "Robot WebSocket connections held by this node."}),
		fenced: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lekiwi_control_fenced", Help: "1 while this node cannot reach the database and sends robots to other nodes."}),
		robotsOnline: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lekiwi_control_robots_online", Help: "Robots in state online, cluster-wide (refreshed by the offline sweep)."}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lekiwi_control_messages_total", Help: "Messages received from robots, by type."}, []string{"type"}),
		protocolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lekiwi_control_protocol_errors_total", Help: "Protocol errors answered to robots, by code."}, []string{"code"}),
		heartbeatLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lekiwi_control_heartbeat_lag_seconds", Help: "Receipt time minus the heartbeat's own timestamp (includes clock skew).", Buckets: lagBuckets}),
		eventLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lekiwi_control_event_lag_seconds", Help: "Time from a robot message's receipt to its commit in the event log.", Buckets: lagBuckets}),
		commitRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lekiwi_control_commit_retries_total", Help: "Event-log batches tried again because their transaction was rolled back (write lock busy, leader changing)."}),
		commitBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lekiwi_control_commit_batch_size", Help: "Events per event-log transaction.", Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "lekiwi_control_commit_seconds", Help: "Duration of one event-log transaction.", Buckets: lagBuckets}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lekiwi_control_duplicate_messages_total", Help: "Robot messages received again after they were durable (acknowledged, not re-applied)."}),
		pendingReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lekiwi_control_pending_command_reads_total", Help: "Reads of outstanding commands for robots that just said hello (batched: one read serves many hellos)."}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lekiwi_control_robot_denied_total", Help: "Robot connections refused, by reason."}, []string{"reason"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lekiwi_control_tls_client_handshakes_total", Help: "TLS handshakes with a client certificate, by whether the session was resumed."}, []string{"resumed"}),
	}
	if reg != nil {
		reg.MustRegister(m.handshakes, m.denied, m.connections, m.fenced, m.robotsOnline, m.messages, m.protocolErrors, m.heartbeatLag, m.eventLag, m.commitBatch, m.commitRetries, m.commitSeconds, m.duplicates, m.pendingReads)
	}
	return m
}
