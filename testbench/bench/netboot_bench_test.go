package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lekiwi/heartbeat/netboot/dhcp"
	"github.com/lekiwi/heartbeat/netboot/tftp"
	"github.com/lekiwi/heartbeat/raspberrypi"
	"github.com/lekiwi/heartbeat/testbench/pisim"
	"github.com/lekiwi/heartbeat/testbench/pisim/netlab"
)

// BenchmarkNetbootConcurrentPiBoots boots 100 simulated Pis (50 Pi 4, 50
// Pi 5) at once against the station's proxy DHCP and TFTP servers, with
// busybox udhcpd as the factory's own DHCP server, on a bridge of network
// namespaces (testbench/pisim/netlab), and prints the station's DHCP
// response times (DISCOVER → boot OFFER), the time until every Pi has its
// boot files, and the failures (must be 0).
//
//	go test -tags libsqlite3 -run '^$' -bench NetbootConcurrentPiBoots -benchtime 1x ./testbench/bench
//
// Needs root, ip, unshare and busybox; it runs itself again inside a
// private network namespace, so the host's network is never touched.
func BenchmarkNetbootConcurrentPiBoots(b *testing.B) {
	if !netlab.Inside() {
		if err := netlab.Available(); err != nil {
			b.Skip(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := netlab.Reexec(ctx, "-test.run=^$", "-test.bench=^BenchmarkNetbootConcurrentPiBoots$", "-test.benchtime=1x", "-test.v")
		fmt.Printf("%s", out)
		if err != nil {
			b.Fatalf("benchmark in a private network namespace: %v", err)
		}
		return
	}
	const fleetSize = 100
	files := map[string]int{ // per board; sizes kept small so 100 boots fit in seconds on 2 cores
		"start4.elf": 300_000, "fixup4.dat": 5_400, "kernel8.img": 900_000, "kernel_2712.img": 1_000_000,
		"bcm2711-rpi-4-b.dtb": 52_000, "bcm2712-rpi-5-b.dtb": 80_000, "initramfs-prov.gz": 400_000,
	}
	const configTxt = "[pi4]\nkernel=kernel8.img\n[pi5]\nkernel=kernel_2712.img\n[all]\ninitramfs initramfs-prov.gz followkernel\n"
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		lab, err := netlab.New(ctx, 79)
		if err != nil {
			b.Fatal(err)
		}
		stopFactory, err := lab.StartFactoryDHCP(ctx, b.TempDir())
		if err != nil {
			lab.Close()
			b.Skip(err)
		}
		proxy, err := dhcp.New(dhcp.Config{Interface: lab.StationIf, ServerIP: lab.StationIP, Mode: dhcp.ModeProxy,
			ListenPacket: lab.ListenPacket(lab.Station), Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		if err := proxy.Start(ctx); err != nil {
			b.Fatal(err)
		}
		dir := b.TempDir()
		for name, size := range files {
			if err := os.WriteFile(filepath.Join(dir, name), bytes.Repeat([]byte{0x5a}, size), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		bootDir, err := tftp.OpenDir(dir)
		if err != nil {
			b.Fatal(err)
		}
		var mu sync.Mutex
		var completed, probes int
		srv, err := tftp.New(tftp.Config{
			Resolver: tftp.ResolverFunc(func(ctx context.Context, serial, file string, client netip.AddrPort) (io.ReaderAt, int64, error) {
				switch file {
				case "config.txt":
					return bytes.NewReader([]byte(configTxt)), int64(len(configTxt)), nil
				case "cmdline.txt":
					c := "console=serial0,115200 lekiwi.station=http://" + lab.StationIP.String() + ":8080 lekiwi.token=tok-" + serial
					return bytes.NewReader([]byte(c)), int64(len(c)), nil
				case "recover4.elf", "pieeprom.sig":
					return nil, 0, fs.ErrNotExist
				}
				return bootDir.Open(ctx, serial, file, client)
			}),
			OnTransfer: func(t tftp.Transfer) {
				mu.Lock()
				defer mu.Unlock()
				switch t.Result {
				case tftp.ResultCompleted:
					completed++
				case tftp.ResultProbe:
					probes++
				}
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		conn, err := lab.ListenUDP(lab.Station, netip.AddrPortFrom(lab.StationIP, 69))
		if err != nil {
			b.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ctx, conn) }()

		fleet, err := pisim.NewFleet(pisim.Config{Interface: lab.PisIf, Netns: lab.Path(lab.Pis),
			DiscoverRetry: time.Second, DHCPTimeout: 30 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		pis := make([]pisim.Pi, fleetSize)
		for j := range pis {
			p := pisim.Pi{Model: 4, MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x10, byte(j >> 8), byte(j)}, Serial: raspberrypi.Serial(0x10000000 + j), Revision: 0xc03111}
			if j%2 == 1 {
				p = pisim.Pi{Model: 5, MAC: net.HardwareAddr{0x2c, 0xcf, 0x67, 0x10, byte(j >> 8), byte(j)}, Serial: raspberrypi.Serial(0x20000000 + j), Revision: 0xd04170}
			}
			pis[j] = p
		}
		results := make([]pisim.Result, fleetSize)
		errs := make([]error, fleetSize)
		bootCtx, bootCancel := context.WithTimeout(ctx, 2*time.Minute)
		b.ResetTimer()
		start := time.Now()
		var wg sync.WaitGroup
		for j := range pis {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[j], errs[j] = fleet.Boot(bootCtx, pis[j])
			}()
		}
		wg.Wait()
		wall := time.Since(start)
		b.StopTimer()
		bootCancel()

		var offer, ack, tftpPhase, total []time.Duration
		var failures, retransmits int
		var bytesFetched int64
		for j, r := range results {
			if errs[j] != nil {
				failures++
				b.Errorf("%v", errs[j])
				continue
			}
			offer = append(offer, r.DHCP.BootOfferLatency)
			ack = append(ack, r.DHCP.AckLatency)
			total = append(total, r.Total)
			tftpPhase = append(tftpPhase, r.TFTP)
			retransmits += r.DHCP.Discovers - 1
			for _, f := range r.Fetched() {
				bytesFetched += f.Bytes
			}
		}
		fmt.Printf("\n%d concurrent simulated Pi boots (%d Pi 4, %d Pi 5): station proxy DHCP + TFTP, udhcpd as the factory DHCP server\n",
			fleetSize, (fleetSize+1)/2, fleetSize/2)
		fmt.Printf("%-36s %10s %10s %10s\n", "", "p50", "p99", "max")
		for _, row := range []struct {
			name string
			d    []time.Duration
		}{{"DHCP DISCOVER → station boot OFFER", offer}, {"DHCP DISCOVER → factory ACK", ack}, {"TFTP phase (all files, probes incl.)", tftpPhase}, {"per-Pi boot (DHCP + all files)", total}} {
			fmt.Printf("%-36s %10s %10s %10s\n", row.name, pct(row.d, 50), pct(row.d, 99), pct(row.d, 100))
		}
		mu.Lock()
		fmt.Printf("all %d Pis booted in %v; failures %d; DISCOVER retransmits %d; replies dropped %d\n",
			fleetSize-failures, wall.Round(time.Millisecond), failures, retransmits, fleet.Dropped())
		fmt.Printf("TFTP: %d files transferred, %d tsize probes, %.1f MB fetched, %.1f MB/s aggregate\n",
			completed, probes, float64(bytesFetched)/1e6, float64(bytesFetched)/1e6/wall.Seconds())
		mu.Unlock()
		b.ReportMetric(float64(pct(offer, 99).Microseconds())/1000, "offer-p99-ms")
		b.ReportMetric(float64(pct(offer, 50).Microseconds())/1000, "offer-p50-ms")
		b.ReportMetric(wall.Seconds(), "all-booted-s")
		b.ReportMetric(float64(failures), "failures")

		fleet.Close()
		cancel()
		<-served
		bootDir.Close()
		proxy.Close()
		stopFactory()
		if err := lab.Close(); err != nil {
			b.Error(err)
		}
	}
}

// pct returns the p-th percentile (nearest rank) of d; 0 for none.
func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1].Round(10 * time.Microsecond)
}
