// Package station is the netboot station: it ties the factory floor
// together so that a bare Raspberry Pi plugged into the factory LAN comes
// out as a registered robot without anyone typing a command.
//
// The flow for one board, keyed by its 8-hex-digit serial:
//
//	seen      DHCP snooping heard it (every device, Pi or not, is also a
//	          DeviceSeen event for control)
//	boot      it fetched <serial>/config.txt, the kernel and the initramfs
//	          over TFTP; config.txt and cmdline.txt are generated here, and
//	          cmdline.txt carries the station's URL and a one-time board
//	          token (protocol.KernelArgStation, protocol.KernelArgToken)
//	probe     the provisioning environment POSTed its hardware report
//	match     the report's servo buses matched a profile (or the board is
//	          held, with the matcher's reason)
//	identity  control gave the board its robot id and enrollment token;
//	          while control is unreachable the board is told to wait and
//	          poll, and a background loop keeps asking
//	install   the board wrote the image and its identity (its own
//	          progress reports), then
//	online    waits for the robot's agent to come online on control
//
// Every step change is a FactoryStep event in a durable outbox that a
// goroutine delivers to control. Board state lives in one JSON file per
// board, replaced atomically, so a station restart loses nothing.
//
// The board's side of the contract (`agent factory run`): POST the report,
// GET the plan until it is not "wait", and report progress. It reports
// step "install" status "done" only once the image is written and verified
// and the identity is on the disk, right before it reboots: from then on
// the station forgets the enrollment token and answers PlanDone.
package station
