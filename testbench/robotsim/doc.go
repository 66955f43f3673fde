// Package robotsim simulates robots against real control nodes: a Fleet of
// Robots each running the real agent runtime (mTLS identity signed by the
// lab CA, fixture /proc trees, optional source addresses so thousands
// share loopback), UpdateBots that answer deployment commands on the wire
// protocol directly, and OTARobots that install real OTA releases
// (BuildOTAImages) onto a file-backed disk and reboot into them.
//
// It measures and asserts nothing itself; scenarios read each robot's
// state, stats and acknowledgements. Nothing in the product imports it.
package robotsim
