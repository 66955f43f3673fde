// Package testbench holds the end-to-end tests of the fleet: control nodes
// from lab, robots from robotsim and factory boards from factory, driven
// through the REST API and the wire protocol (enrollment, commands,
// deployments, OTA, the registry, the factory floor). It has no API of its
// own; nothing imports it.
//
// The subpackages divide the rest: lab (control nodes, clusters, fixtures,
// process stats), robotsim (simulated robots), and the scenarios chaos,
// scale, factory, bench and demo; cmd holds their command-line mains.
package testbench
