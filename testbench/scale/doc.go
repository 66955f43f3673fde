// Package scale is the scale harness behind `make bench-scale`
// (cmd/scalebench): Run drives control processes (lab.Member) under
// growing mTLS fleets, reconnect storms, dashboard subscribers and a dqlite
// cluster, and reports each step's throughput, acknowledgement latency,
// CPU and memory (Table, Plot). The load runs in child processes of the
// same binary, RunWorker (robotsim fleets) and RunSubscribers, that report
// JSON status lines on stdout; both halves of that protocol live here
// because they change together.
package scale
