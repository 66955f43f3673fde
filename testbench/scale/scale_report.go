package scale

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/lekiwi/heartbeat/testbench/lab"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// summary is one line for the progress log.
func (s Step) summary() string {
	b := fmt.Sprintf("%s %d robots @%s: %.0f hb/s (offered %.0f), ack p50/p99 %s/%s, control %.2f cores %s, sim %.2f cores %s, load %s",
		s.Scenario, s.Robots, s.Interval, s.HeartbeatPerSec, s.OfferedPerSec, lab.Millis(s.AckP50), lab.Millis(s.AckP99), s.ControlCPU, lab.MiB(s.ControlRSS), s.SimCPU, lab.MiB(s.SimRSS), s.LoadAvg)
	b += fmt.Sprintf(" (Go heap %s, stacks %s, idle heap not returned %s)", lab.MiB(uint64(s.HeapInuse)), lab.MiB(uint64(s.StackInuse)), lab.MiB(uint64(s.HeapUnreleased)))
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

// Table renders the steps as Markdown: one table for the measurements,
// one for the reconnect storms, subscriber and cluster details below.
func Table(steps []Step) string {
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
			lab.Millis(s.AckP50), lab.Millis(s.AckP99), lab.Millis(s.AckMax), s.AckSamples, s.ControlCPU, s.CPUPer1000Msgs,
			lab.MiB(s.ControlRSS), perConn, lab.MiB(uint64(s.HeapInuse)), lab.MiB(uint64(s.StackInuse)), gpc,
			lab.Millis(s.GetP99), lab.Millis(s.ListP99), s.SimProcs, lab.MiB(s.SimRSS), s.SimCPU, s.LoadAvg, orDash(s.Saturated))
	}
	var storms, subs, cluster []Step
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
				lab.Millis(s.SubP50), lab.Millis(s.SubP99), s.SubCPU, s.SubErrors, s.SubLastError, orDash(s.Note))
		}
	}
	if len(cluster) > 0 {
		b.WriteString("\nCluster\n\n| scenario | members | robots connected | connect | member RSS | member cores | visible from every member |\n|---|---|---|---|---|---|---|\n")
		for _, s := range cluster {
			var rss []string
			for _, v := range s.MemberRSS {
				rss = append(rss, lab.MiB(v))
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

// Plot draws control memory per robot and heartbeat ack latency (p50,
// p99) against fleet size, as a PNG: one node's cold steps and, when the
// steps hold any, the cluster's (memory summed over its members).
func Plot(steps []Step) ([]byte, error) {
	single, cluster := plotSteps(steps, "single"), plotSteps(steps, "cluster")
	xlabel := "Fleet size (robots), mTLS"
	if all := append(single, cluster...); len(all) > 0 {
		xlabel += ", heartbeat every " + all[0].Interval.String()
	}
	mem := newScalePanel("Control RSS per robot (KiB)", xlabel)
	lat := newScalePanel("Heartbeat ack latency (ms)", xlabel)
	perRobot := func(s Step) float64 { return s.RSSPerConn / 1024 }
	p50 := func(s Step) float64 { return float64(s.AckP50) / float64(time.Millisecond) }
	p99 := func(s Step) float64 { return float64(s.AckP99) / float64(time.Millisecond) }
	if len(single) > 0 {
		addSeries(mem, "one node", plotBlue, single, perRobot)
		addSeries(lat, "p50 one node", plotOrange, single, p50)
		addSeries(lat, "p99 one node", plotRed, single, p99)
	}
	if len(cluster) > 0 {
		addSeries(mem, fmt.Sprintf("%d members", cluster[0].Members), plotGreen, cluster, perRobot)
		addSeries(lat, "p50 cluster", plotTeal, cluster, p50)
		addSeries(lat, "p99 cluster", plotPurple, cluster, p99)
	}
	for _, p := range []*plot.Plot{mem, lat} {
		// From zero, with room above the highest point for the legend.
		p.X.Min, p.Y.Min = 0, 0
		p.X.Max, p.Y.Max = max(p.X.Max, 1), max(p.Y.Max, 1)*1.3
	}
	const w, h = 960, 420 // pixels, at 96 dpi
	img := vgimg.NewWith(vgimg.UseWH(w*vg.Inch/96, h*vg.Inch/96), vgimg.UseDPI(96))
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Centimeter, PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 5}
	canvases := plot.Align([][]*plot.Plot{{mem, lat}}, tiles, draw.New(img))
	mem.Draw(canvases[0][0])
	lat.Draw(canvases[0][1])
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("plot: encode the PNG: %w", err)
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
func plotSteps(steps []Step, scenario string) []Step {
	var pts []Step
	for _, s := range steps {
		if s.Scenario == scenario && s.RSSPerConn > 0 {
			pts = append(pts, s)
		}
	}
	slices.SortFunc(pts, func(a, b Step) int { return a.Robots - b.Robots })
	return pts
}

// newScalePanel is one empty panel: title, axis label, grid, legend top left.
func newScalePanel(title, xlabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.X.Tick.Marker = plot.TickerFunc(fleetTicks)
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Millimeter*2, -vg.Millimeter*2
	for _, f := range []*font.Font{&p.Title.TextStyle.Font, &p.X.Label.TextStyle.Font, &p.X.Tick.Label.Font, &p.Y.Tick.Label.Font, &p.Legend.TextStyle.Font} {
		f.Variant = "Sans"
	}
	grid := plotter.NewGrid()
	grid.Vertical.Color, grid.Horizontal.Color = color.Gray{Y: 210}, color.Gray{Y: 210}
	p.Add(grid)
	return p
}

// fleetTicks are the default ticks labelled 10K, 20K… once they reach
// thousands of robots.
func fleetTicks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i, t := range ticks {
		if t.Label != "" && hi >= 10000 && t.Value == math.Trunc(t.Value/1000)*1000 {
			ticks[i].Label = fmt.Sprintf("%.0fK", t.Value/1000)
			if t.Value == 0 {
				ticks[i].Label = "0"
			}
		}
	}
	return ticks
}

// addSeries adds one line with its points to p, the value of each step
// against its fleet size; a value that is not a number is left out.
func addSeries(p *plot.Plot, label string, c color.RGBA, pts []Step, value func(Step) float64) {
	var xys plotter.XYs
	for _, s := range pts {
		if y := value(s); !math.IsNaN(y) && !math.IsInf(y, 0) {
			xys = append(xys, plotter.XY{X: float64(s.Robots), Y: y})
		}
	}
	if len(xys) == 0 {
		return
	}
	l, sc, err := plotter.NewLinePoints(xys)
	if err != nil { // only for NaN or infinite values, left out above
		return
	}
	l.LineStyle.Color, l.LineStyle.Width = c, vg.Points(2)
	sc.GlyphStyle = draw.GlyphStyle{Color: c, Shape: draw.BoxGlyph{}, Radius: vg.Points(3)}
	p.Add(l, sc)
	p.Legend.Add(label, l, sc)
}
