// Package bench measures control under simulated fleets and reports
// Markdown tables for docs/BENCHMARKS.md: heartbeat throughput and
// acknowledgement latency against a control process (Run), reconnect
// storms after a restart (RunReconnect), event ingestion (RunEvents) and
// memory per idle mTLS connection (RunConnMem, guarded by
// TestConnMemPerConnection). The benchmarks of stream fan-out, TFTP and
// concurrent Pi netboots live in its tests. cmd/fleet runs the first three.
package bench
