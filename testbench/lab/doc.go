// Package lab runs the pieces of a Heartbeat fleet that scenarios and
// benchmarks stand on: control nodes in this process or as real processes
// on loopback (a ProcCluster of two control nodes and a witness, built
// from cmd/control), a lab CA, fixture /proc and /sys trees of simulated
// Raspberry Pi boards, the operator's REST client, network namespaces and
// iptables partitions, and process statistics read from /proc.
//
// It simulates no robots (see testbench/robotsim) and asserts nothing:
// every helper returns an error that names what failed. Nothing in the
// product imports it.
package lab
