// Package collect samples the robot's telemetry — CPU, memory, disk, SoC
// temperature, uptime, hostname, OS version and addresses — from /proc, /sys
// and /etc, and decides whether a new sample differs meaningfully from the
// last one sent.
//
// Every root (/proc, /sys, /etc), the filesystem statistics call and the
// network interface lister are injectable, so the same code runs against the
// fixture trees in testdata/ (a Raspberry Pi 5) and against a real board.
package collect
