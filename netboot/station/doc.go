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
// GET the plan until it is not "wait", and report progress: probe, install
// (image written), verify, identity, reboot. Step "identity" status "done"
// means the identity is on the disk after the image verified — the last
// step before the reboot: from then on the station forgets the enrollment
// token and answers PlanDone. An earlier "install done" only says the image
// bytes are written; a board that restarts after it still gets its plan
// (and identity) again.
package station
