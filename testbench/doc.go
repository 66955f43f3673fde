// Package testbench holds the fleet simulator, lab helpers (control nodes on
// loopback, fixture /proc trees), end-to-end scenario tests and benchmarks.
// It may import every package of the project; nothing imports it.
package testbench
