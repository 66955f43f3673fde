package testbench

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"slices"
	"strings"
	"time"
)

// summary is one line for the progress log.
func (s ScaleStep) summary() string {
	b := fmt.Sprintf("%s %d robots @%s: %.0f hb/s (offered %.0f), ack p50/p99 %s/%s, control %.2f cores %s, sim %.2f cores %s, load %s",
		s.Scenario, s.Robots, s.Interval, s.HeartbeatPerSec, s.OfferedPerSec, ms(s.AckP50), ms(s.AckP99), s.ControlCPU, mib(s.ControlRSS), s.SimCPU, mib(s.SimRSS), s.LoadAvg)
	b += fmt.Sprintf(" (Go heap %s, stacks %s, idle heap not returned %s)", mib(uint64(s.HeapInuse)), mib(uint64(s.StackInuse)), mib(uint64(s.HeapUnreleased)))
	if s.RSSPerConn > 0 {
		b += fmt.Sprintf(", %.1f KiB/conn", s.RSSPerConn/1024)
	}
	if s.StormFromReady > 0 {
		b += fmt.Sprintf(", storm %s peak %.2f cores", s.StormFromReady.Round(time.Millisecond), s.StormPeakCPU)
	}
	if s.Saturated != "" {
		b += ", SATURATED: " + s.Saturated
	}
	if s.Note != "" {
		b += ", " + s.Note
	}
	return b
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// ScaleTable renders the steps as Markdown: one table for the measurements,
// one for the reconnect storms, subscriber and cluster details below.
func ScaleTable(steps []ScaleStep) string {
	var b strings.Builder
	b.WriteString("| scenario | robots | interval | offered hb/s | hb/s | msgs/s | ack p50 / p99 / max | control cores | CPU ms / 1k msgs | control RSS | KiB / conn | heap / stacks | goroutines / conn | GET p99 | list p99 | simulators: procs, RSS, cores | load avg | saturated |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range steps {
		if s.Scenario == "cluster restart" {
			continue
		}
		perConn := "—"
		if s.RSSPerConn > 0 {
			perConn = fmt.Sprintf("%.1f", s.RSSPerConn/1024)
		}
		gpc := 0.0
		if s.Connected > 0 {
			gpc = s.Goroutines / float64(s.Connected)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.0f | %.0f | %.0f | %s / %s / %s (n=%d) | %.2f | %.1f | %s | %s | %s / %s | %.2f | %s | %s | %d, %s, %.2f | %s | %s |\n",
			s.Scenario, s.Robots, s.Interval, s.OfferedPerSec, s.HeartbeatPerSec, s.MessagesPerSec,
			ms(s.AckP50), ms(s.AckP99), ms(s.AckMax), s.AckSamples, s.ControlCPU, s.CPUPer1000Msgs,
			mib(s.ControlRSS), perConn, mib(uint64(s.HeapInuse)), mib(uint64(s.StackInuse)), gpc,
			ms(s.GetP99), ms(s.ListP99), s.SimProcs, mib(s.SimRSS), s.SimCPU, s.LoadAvg, orDash(s.Saturated))
	}
	var storms, subs, cluster []ScaleStep
	for _, s := range steps {
		if s.StormFromReady > 0 || s.Scenario == "cluster restart" {
			storms = append(storms, s)
		}
		if s.Subscribers > 0 {
			subs = append(subs, s)
		}
		if strings.HasPrefix(s.Scenario, "cluster") {
			cluster = append(cluster, s)
		}
	}
	if len(storms) > 0 {
		b.WriteString("\nReconnect storms (single: control restarted to change the interval; cluster: one member restarted)\n\n")
		b.WriteString("| scenario | robots | restart → all connected | node ready → all connected | peak control cores | peak simulator cores | connections per member | load avg | note |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range storms {
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %.2f | %.2f | %s | %s | %s |\n", s.Scenario, s.Robots, s.Connect.Round(time.Millisecond),
				s.StormFromReady.Round(time.Millisecond), s.StormPeakCPU, s.StormSimPeak, ints(s.MemberConnect), s.LoadAvg, orDash(s.Note))
		}
	}
	if len(subs) > 0 {
		b.WriteString("\nDashboard subscribers on /v1/stream (robot.*.heartbeat), during the load of the row above\n\n")
		b.WriteString("| robots | interval | subscribers | frames/s delivered | delivery p50 / p99 | subscriber process cores | errors | note |\n|---|---|---|---|---|---|---|---|\n")
		for _, s := range subs {
			fmt.Fprintf(&b, "| %d | %s | %d | %.0f | %s / %s | %.2f | %d %s | %s |\n", s.Robots, s.Interval, s.Subscribers, s.SubFramesSec,
				ms(s.SubP50), ms(s.SubP99), s.SubCPU, s.SubErrors, s.SubLastError, orDash(s.Note))
		}
	}
	if len(cluster) > 0 {
		b.WriteString("\nCluster\n\n| scenario | members | robots connected | connect | member RSS | member cores | visible from every member |\n|---|---|---|---|---|---|---|\n")
		for _, s := range cluster {
			var rss []string
			for _, v := range s.MemberRSS {
				rss = append(rss, mib(v))
			}
			var cpu []string
			for _, v := range s.MemberCPU {
				cpu = append(cpu, fmt.Sprintf("%.2f", v))
			}
			fmt.Fprintf(&b, "| %s | %d | %d/%d | %s | %s | %s | %s |\n", s.Scenario, s.Members, s.Connected, s.Robots, s.Connect.Round(time.Second),
				orDash(strings.Join(rss, ", ")), orDash(strings.Join(cpu, ", ")), orDash(s.Visible))
		}
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func ints(v []int) string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprint(x))
	}
	return orDash(strings.Join(s, ", "))
}

// ScalePlot draws control memory per robot and heartbeat ack latency (p50,
// p99) against fleet size, as a PNG: one node's cold steps and, when the
// steps hold any, the cluster's (memory summed over its members).
func ScalePlot(steps []ScaleStep) ([]byte, error) {
	single, cluster := plotSteps(steps, "single"), plotSteps(steps, "cluster")
	const w, h = 960, 420
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	fill(img, img.Bounds(), color.RGBA{255, 255, 255, 255})
	left := image.Rect(60, 40, w/2-20, h-50)
	right := image.Rect(w/2+60, 40, w-20, h-50)
	var mem, lat []series
	if len(single) > 0 {
		mem = append(mem, memSeries(single, plotBlue, "ONE NODE"))
		lat = append(lat, latSeries(single, false, plotOrange, "P50 ONE NODE"), latSeries(single, true, plotRed, "P99 ONE NODE"))
	}
	if len(cluster) > 0 {
		mem = append(mem, memSeries(cluster, plotGreen, fmt.Sprintf("%d MEMBERS", cluster[0].Members)))
		lat = append(lat, latSeries(cluster, false, plotTeal, "P50 CLUSTER"), latSeries(cluster, true, plotPurple, "P99 CLUSTER"))
	}
	drawPanel(img, left, "CONTROL RSS PER ROBOT (KIB)", mem)
	drawPanel(img, right, "HEARTBEAT ACK LATENCY (MS)", lat)
	xlabel := "FLEET SIZE (ROBOTS), MTLS"
	if all := append(single, cluster...); len(all) > 0 {
		xlabel += ", HEARTBEAT EVERY " + all[0].Interval.String()
	}
	drawText(img, w/2-4*len(xlabel), h-20, xlabel, color.RGBA{0, 0, 0, 255})
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	if len(single)+len(cluster) == 0 {
		return buf.Bytes(), errors.New("plot: no cold step with memory per connection yet (single or cluster)")
	}
	return buf.Bytes(), nil
}

// The plot's colours; tests look for them.
var (
	plotBlue   = color.RGBA{31, 90, 180, 255}
	plotRed    = color.RGBA{200, 40, 40, 255}
	plotOrange = color.RGBA{230, 140, 20, 255}
	plotGreen  = color.RGBA{30, 150, 60, 255}
	plotTeal   = color.RGBA{20, 160, 160, 255}
	plotPurple = color.RGBA{130, 50, 170, 255}
)

// plotSteps are a scenario's cold steps (connect from nothing, memory per
// connection measured), by fleet size.
func plotSteps(steps []ScaleStep, scenario string) []ScaleStep {
	var pts []ScaleStep
	for _, s := range steps {
		if s.Scenario == scenario && s.RSSPerConn > 0 {
			pts = append(pts, s)
		}
	}
	slices.SortFunc(pts, func(a, b ScaleStep) int { return a.Robots - b.Robots })
	return pts
}

func memSeries(pts []ScaleStep, c color.RGBA, label string) series {
	sr := series{c: c, label: label}
	for _, s := range pts {
		sr.xs = append(sr.xs, float64(s.Robots))
		sr.ys = append(sr.ys, s.RSSPerConn/1024)
	}
	return sr
}

func latSeries(pts []ScaleStep, p99 bool, c color.RGBA, label string) series {
	sr := series{c: c, label: label}
	for _, s := range pts {
		d := s.AckP50
		if p99 {
			d = s.AckP99
		}
		sr.xs = append(sr.xs, float64(s.Robots))
		sr.ys = append(sr.ys, float64(d)/float64(time.Millisecond))
	}
	return sr
}

type series struct {
	xs, ys []float64
	c      color.RGBA
	label  string
}

func drawPanel(img *image.RGBA, r image.Rectangle, title string, ss []series) {
	black, grey := color.RGBA{0, 0, 0, 255}, color.RGBA{220, 220, 220, 255}
	drawText(img, r.Min.X, r.Min.Y-25, title, black)
	xmax, ymax := 1.0, 1.0
	for _, s := range ss {
		for _, x := range s.xs {
			xmax = max(xmax, x)
		}
		for _, y := range s.ys {
			if !math.IsNaN(y) && !math.IsInf(y, 0) {
				ymax = max(ymax, y)
			}
		}
	}
	xmax, ymax = niceCeil(xmax), niceCeil(ymax*1.05)
	px := func(x float64) int { return r.Min.X + int(x/xmax*float64(r.Dx())) }
	py := func(y float64) int { return r.Max.Y - int(y/ymax*float64(r.Dy())) }
	for i := 0; i <= 4; i++ {
		gy := r.Max.Y - i*r.Dy()/4
		line(img, r.Min.X, gy, r.Max.X, gy, grey)
		drawText(img, r.Min.X-55, gy-4, fmtTick(ymax*float64(i)/4), black)
		gx := r.Min.X + i*r.Dx()/4
		line(img, gx, r.Min.Y, gx, r.Max.Y, grey)
		drawText(img, gx-12, r.Max.Y+8, fmtTick(xmax*float64(i)/4), black)
	}
	line(img, r.Min.X, r.Max.Y, r.Max.X, r.Max.Y, black)
	line(img, r.Min.X, r.Min.Y, r.Min.X, r.Max.Y, black)
	for k, s := range ss {
		drawText(img, r.Max.X-8*len(s.label)-4, r.Min.Y+8+k*14, s.label, s.c)
		for i := range s.ys {
			x, y := px(s.xs[i]), py(s.ys[i])
			fill(img, image.Rect(x-3, y-3, x+4, y+4), s.c)
			if i > 0 {
				thick(img, px(s.xs[i-1]), py(s.ys[i-1]), x, y, s.c)
			}
		}
	}
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func fmtTick(v float64) string {
	switch {
	case v >= 1000 && math.Mod(v, 1000) == 0:
		return fmt.Sprintf("%.0fK", v/1000)
	case v >= 100 || v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.SetRGBA(x, y, c)
		}
	}
}

// line draws with Bresenham's algorithm.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := 1, 1
	if x0 > x1 {
		sx = -1
	}
	if y0 > y1 {
		sy = -1
	}
	e := dx + dy
	for range dx - dy + 1 {
		if (image.Point{x0, y0}).In(img.Bounds()) {
			img.SetRGBA(x0, y0, c)
		}
		if x0 == x1 && y0 == y1 {
			return
		}
		if e2 := 2 * e; e2 >= dy {
			e += dy
			x0 += sx
		} else {
			e += dx
			y0 += sy
		}
	}
}

func thick(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	for d := -1; d <= 1; d++ {
		line(img, x0, y0+d, x1, y1+d, c)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

// glyphs is a 3x5 bitmap font for the plot's labels (no font package in
// the standard library): each glyph is five rows of three bits.
var glyphs = map[rune][5]uint8{
	'0': {7, 5, 5, 5, 7}, '1': {2, 6, 2, 2, 7}, '2': {7, 1, 7, 4, 7}, '3': {7, 1, 7, 1, 7}, '4': {5, 5, 7, 1, 1},
	'5': {7, 4, 7, 1, 7}, '6': {7, 4, 7, 5, 7}, '7': {7, 1, 1, 1, 1}, '8': {7, 5, 7, 5, 7}, '9': {7, 5, 7, 1, 7},
	'A': {2, 5, 7, 5, 5}, 'B': {6, 5, 6, 5, 6}, 'C': {7, 4, 4, 4, 7}, 'D': {6, 5, 5, 5, 6}, 'E': {7, 4, 6, 4, 7},
	'F': {7, 4, 6, 4, 4}, 'G': {7, 4, 5, 5, 7}, 'H': {5, 5, 7, 5, 5}, 'I': {7, 2, 2, 2, 7}, 'J': {1, 1, 1, 5, 7},
	'K': {5, 5, 6, 5, 5}, 'L': {4, 4, 4, 4, 7}, 'M': {5, 7, 7, 5, 5}, 'N': {6, 5, 5, 5, 5}, 'O': {7, 5, 5, 5, 7},
	'P': {7, 5, 7, 4, 4}, 'Q': {7, 5, 5, 7, 1}, 'R': {7, 5, 6, 5, 5}, 'S': {7, 4, 7, 1, 7}, 'T': {7, 2, 2, 2, 2},
	'U': {5, 5, 5, 5, 7}, 'V': {5, 5, 5, 5, 2}, 'W': {5, 5, 7, 7, 5}, 'X': {5, 5, 2, 5, 5}, 'Y': {5, 5, 2, 2, 2},
	'Z': {7, 1, 2, 4, 7}, '.': {0, 0, 0, 0, 2}, ',': {0, 0, 0, 2, 4}, '-': {0, 0, 7, 0, 0}, '/': {1, 1, 2, 4, 4},
	'(': {1, 2, 2, 2, 1}, ')': {4, 2, 2, 2, 4}, ':': {0, 2, 0, 2, 0}, '%': {5, 1, 2, 4, 5}, '+': {0, 2, 7, 2, 0},
}

// drawText writes s at (x, y) (top left) at twice the glyph size.
func drawText(img *image.RGBA, x, y int, s string, c color.RGBA) {
	const scale = 2
	for _, ch := range strings.ToUpper(s) {
		g, ok := glyphs[ch]
		if ok {
			for row, bits := range g {
				for col := range 3 {
					if bits&(4>>col) != 0 {
						fill(img, image.Rect(x+col*scale, y+row*scale, x+(col+1)*scale, y+(row+1)*scale), c)
					}
				}
			}
		}
		x += 4 * scale
	}
}
