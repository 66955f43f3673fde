// Command flashbench runs the flash benchmark (see package
// testbench/flashbench): `make bench-flash`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/lekiwi/heartbeat/testbench/flashbench"
)

func main() {
	var cfg flashbench.Config
	flag.StringVar(&cfg.Provision, "provision", "bin/provision", "provision binary to measure")
	flag.StringVar(&cfg.Dir, "dir", "/var/tmp/lekiwi-flashbench", "work directory on the disk under test (not tmpfs: O_DIRECT)")
	flag.Int64Var(&cfg.ImageSize, "image-mib", 4096, "image size in MiB")
	flag.Int64Var(&cfg.DataSize, "data-mib", 1024, "mapped data in the image, MiB")
	flag.Int64Var(&cfg.ThrottleImage, "throttle-image-mib", 1024, "image size for the throttled 1-vs-4 scenario, MiB (0 skips it)")
	flag.Int64Var(&cfg.ThrottleData, "throttle-data-mib", 256, "mapped data in that image, MiB")
	flag.Int64Var(&cfg.WriteBPS, "write-mibps", 20, "write limit per throttled loop device, MiB/s")
	flag.Int64Var(&cfg.ReadBPS, "read-mibps", 80, "read limit per throttled loop device, MiB/s")
	flag.Parse()
	cfg.ImageSize <<= 20
	cfg.DataSize <<= 20
	cfg.ThrottleImage <<= 20
	cfg.ThrottleData <<= 20
	cfg.WriteBPS <<= 20
	cfg.ReadBPS <<= 20
	cfg.Out = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := flashbench.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "flashbench:", err)
		os.Exit(1)
	}
}
