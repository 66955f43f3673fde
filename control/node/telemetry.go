package node

import (
	"context"
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lekiwi/heartbeat/control/telemetry"
)

// startTelemetry runs the telemetry history and alert rules on every
// node; each pass works only while this node is the dqlite leader, and
// continues from the replicated cursor and alerts table after a failover. The webhook, when configured, runs on every node but only the
// leader's passes feed it.
func (n *Node) startTelemetry(ctx context.Context, reg prometheus.Registerer) error {
	rules := telemetry.DefaultRules()
	switch path := n.cfg.AlertRules; path {
	case "":
	case "off":
		rules = telemetry.Rules{}
	default:
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("alert rules: %w", err)
		}
		rules, err = telemetry.ParseRules(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("alert rules %s: %w", path, err)
		}
	}
	log := n.log.With("component", "telemetry")
	tel, err := telemetry.New(n.store, telemetry.Options{Logger: log, Submit: n.gateway.Submit})
	if err != nil {
		return err
	}
	samples := prometheus.NewCounter(prometheus.CounterOpts{Name: "lekiwi_control_telemetry_samples_total", Help: "Telemetry samples ingested by this node (as leader)."})
	alerts := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lekiwi_control_alerts_total", Help: "Alert events recorded by this node (as leader)."}, []string{"type", "rule"})
	reg.MustRegister(samples, alerts)
	o := telemetry.RunOptions{
		Rules:    rules.Rules,
		IsLeader: n.store.IsLeader,
		OnPass: func(rep telemetry.IngestReport, fired []telemetry.Alert, _ error) {
			samples.Add(float64(rep.Samples))
			for _, a := range fired {
				alerts.WithLabelValues(a.Type, a.Rule).Inc()
			}
		},
	}
	if rules.Webhook.URL != "" {
		hook, err := telemetry.NewWebhook(telemetry.WebhookOptions{URL: rules.Webhook.URL, Timeout: rules.Webhook.Timeout, Logger: log})
		if err != nil {
			return err
		}
		o.Notify = func(a telemetry.Alert) { hook.Enqueue(a) }
		n.run(ctx, hook.Run)
	}
	n.run(ctx, func(ctx context.Context) error { return tel.Run(ctx, o) })
	return nil
}
