package main

// Self-contained SVG charts for the benchmark report.
//
// The charts use no scripts, external fonts or stylesheets, so the output
// can be written to a .svg file next to the Markdown results and referenced
// with an image link, or inlined. Every number written to the output passes
// through chartNum, so no input (empty, constant, zero, NaN, ±Inf or
// absurdly large values) can produce "NaN" or "Inf" in the SVG.

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Bar is one bar of a bar chart.
type Bar struct {
	Label string // e.g. "glimpse", "consul", "ceiling"
	Value float64
	Note  string // optional text drawn above the bar, e.g. "0.95x ceiling"
}

// Series is one latency distribution.
type Series struct {
	Name   string
	Values []float64 // milliseconds, unsorted, may be empty
}

// chartPalette holds distinct, colour-blind-friendly-ish colours used in
// order for bars and CDF series.
var chartPalette = []string{
	"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
	"#9467bd", "#8c564b", "#e377c2", "#17becf",
}

// chartColor returns the palette colour for the i-th bar or series.
func chartColor(i int) string { return chartPalette[i%len(chartPalette)] }

// chartMaxMag and chartMinMag bound the magnitude of plotted values so that
// spans, steps and logarithms stay finite; larger values are clamped to
// chartMaxMag and smaller non-zero ones to zero.
const (
	chartMaxMag = 1e300
	chartMinMag = 1e-300
)

// percentile returns the p-th percentile (0 <= p <= 100) of sorted, which
// must be sorted in ascending order, using the nearest-rank method: the
// smallest element such that at least p% of the elements are <= it. The
// result is always an element of sorted (no interpolation). p <= 0 (or NaN)
// yields the minimum and p >= 100 the maximum. An empty slice yields 0.
func percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if !(p > 0) {
		return sorted[0]
	}
	if p >= 100 {
		return sorted[n-1]
	}
	// p*n is computed before dividing to keep integer inputs exact; the
	// small epsilon absorbs rounding error from non-integral p.
	rank := int(math.Ceil(p*float64(n)/100 - 1e-9))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// barChartSVG draws a vertical bar chart of bars, about 640x360 pixels:
// title at the top, one bar per element with its Label below, its Value
// printed on the bar and its Note (if any) above it, and a y axis starting
// at 0 with about five round gridlines (1, 2, 5 × 10^n steps) labelled
// with unit. Negative and non-finite values are drawn as empty bars (a
// non-finite value is printed as "n/a"). An empty bars slice yields
// axes and a "no data" message.
func barChartSVG(title, unit string, bars []Bar) []byte {
	const (
		w, h                     = 640, 360
		left, right, top, bottom = 76.0, 16.0, 56.0, 44.0
		pw, ph                   = w - left - right, h - top - bottom
	)
	c := newChartCanvas(w, h, title)

	maxV := 0.0
	for _, b := range bars {
		if v, ok := chartClean(b.Value); ok && v > maxV {
			maxV = v
		}
	}
	ax := chartLinearAxis(0, maxV)
	y := func(v float64) float64 { return top + ph - (v-ax.lo)/(ax.hi-ax.lo)*ph }

	// Gridlines, tick labels, axes and the unit label.
	for _, t := range ax.ticks() {
		c.line(left, y(t), left+pw, y(t), "#dddddd", 1, "")
		c.text(left-6, y(t)+4, "end", 11, "#333333", "", ax.label(t))
	}
	c.line(left, top, left, top+ph, "#333333", 1, "")
	c.line(left, top+ph, left+pw, top+ph, "#333333", 1, "")
	c.vtext(18, top+ph/2, 12, unit)

	if len(bars) == 0 {
		c.text(left+pw/2, top+ph/2, "middle", 14, "#888888", "", "no data")
		return c.bytes()
	}

	slot := pw / float64(len(bars))
	bw := math.Min(slot*0.6, 96)
	for i, b := range bars {
		cx := left + slot*(float64(i)+0.5)
		v, ok := chartClean(b.Value)
		bh := 0.0
		if ok && v > 0 {
			bh = v / ax.hi * ph
		}
		barTop := top + ph - bh
		c.rect(cx-bw/2, barTop, bw, bh, chartColor(i))

		value := "n/a"
		if ok {
			value = chartFmtValue(v)
		}
		above := barTop // baseline of the lowest text stacked above the bar
		if bh >= 20 {
			c.text(cx, barTop+15, "middle", 12, "#ffffff", ` font-weight="bold"`, value)
		} else {
			c.text(cx, barTop-5, "middle", 12, "#222222", ` font-weight="bold"`, value)
			above -= 16
		}
		if b.Note != "" {
			c.text(cx, above-5, "middle", 11, "#444444", "", b.Note)
		}
		c.text(cx, top+ph+18, "middle", 12, "#222222", "", b.Label)
	}
	return c.bytes()
}

// cdfChartSVG draws the empirical CDF of each series as a step line, about
// 640x400 pixels (taller when there are more than four series, to fit the
// legend). Each series gets a distinct colour and a legend row with its
// name, p50, p99 and sample count. The x axis is in milliseconds, on a
// log10 scale when max/min of the positive values exceeds 50 and no value
// is negative (values <= 0 are then drawn at the smallest positive value),
// else linear. The y axis runs from 0 to 100 %. When targetMs > 0 a dashed
// vertical line labelled "target" is drawn there, and the x range is
// widened to include it. Non-finite values are ignored.
func cdfChartSVG(title string, series []Series, targetMs float64) []byte {
	const (
		w                 = 640
		left, right, top  = 64.0, 20.0, 44.0
		rowH, belowAxis   = 18.0, 52.0
		pw                = w - left - right
		minRows, baseH    = 4, 400
		legendSwatchWidth = 18.0
	)
	rows := max(len(series), minRows)
	h := baseH + int(rowH)*(rows-minRows)
	ph := float64(h) - top - belowAxis - rowH*float64(rows) - 8
	c := newChartCanvas(w, h, title)

	// Clean and sort every series, and find the data range.
	sorted := make([][]float64, len(series))
	lo, hi, minPos := math.Inf(1), math.Inf(-1), math.Inf(1)
	note := func(v float64) {
		lo, hi = math.Min(lo, v), math.Max(hi, v)
		if v > 0 {
			minPos = math.Min(minPos, v)
		}
	}
	for i, s := range series {
		vals := make([]float64, 0, len(s.Values))
		for _, v := range s.Values {
			if v, ok := chartClean(v); ok {
				vals = append(vals, v)
				note(v)
			}
		}
		sort.Float64s(vals)
		sorted[i] = vals
	}
	hasData := !math.IsInf(lo, 1)
	target, hasTarget := chartClean(targetMs)
	hasTarget = hasTarget && target > 0
	if hasTarget {
		note(target)
	}

	// Choose the x axis.
	var (
		x      func(float64) float64
		xTicks []float64
		xLabel func(float64) string
		xTitle = "latency (ms)"
	)
	switch {
	case !math.IsInf(minPos, 1) && lo >= 0 && hi/minPos > 50:
		la := chartLogAxis(minPos, hi)
		x = func(v float64) float64 {
			v = math.Max(v, minPos)
			return left + (math.Log10(v)-la.loE)/(la.hiE-la.loE)*pw
		}
		xTicks, xLabel = la.ticks(), chartFmtLogTick
		xTitle += ", log scale"
	default:
		if math.IsInf(lo, 1) {
			lo, hi = 0, 1
		}
		if hi == lo {
			d := math.Abs(lo) * 0.1
			if d == 0 {
				d = 1
			}
			orig := lo
			lo, hi = lo-d, hi+d
			if orig >= 0 && lo < 0 {
				lo = 0
			}
		}
		ax := chartLinearAxis(lo, hi)
		x = func(v float64) float64 { return left + (v-ax.lo)/(ax.hi-ax.lo)*pw }
		xTicks, xLabel = ax.ticks(), ax.label
	}
	y := func(f float64) float64 { return top + ph - f*ph }

	// Gridlines, tick labels and axes.
	for _, t := range xTicks {
		c.line(x(t), top, x(t), top+ph, "#e4e4e4", 1, "")
		c.text(x(t), top+ph+16, "middle", 11, "#333333", "", xLabel(t))
	}
	for pct := 0; pct <= 100; pct += 20 {
		f := float64(pct) / 100
		c.line(left, y(f), left+pw, y(f), "#e4e4e4", 1, "")
		c.text(left-6, y(f)+4, "end", 11, "#333333", "", strconv.Itoa(pct)+"%")
	}
	c.line(left, top, left, top+ph, "#333333", 1, "")
	c.line(left, top+ph, left+pw, top+ph, "#333333", 1, "")
	c.text(left+pw/2, top+ph+34, "middle", 12, "#222222", "", xTitle)
	c.vtext(16, top+ph/2, 12, "cumulative %")

	if !hasData {
		c.text(left+pw/2, top+ph/2, "middle", 14, "#888888", "", "no data")
	}

	// One step line per series: at each distinct pixel column the line runs
	// horizontally at the previous CDF level, then rises vertically. Merging
	// samples that land in the same column bounds the path size.
	for i, vals := range sorted {
		if len(vals) == 0 {
			continue
		}
		n := float64(len(vals))
		var d strings.Builder
		curX, pendingY := chartNum(x(vals[0])), chartNum(y(0))
		d.WriteString("M" + curX + " " + pendingY)
		for j, v := range vals {
			if px := chartNum(x(v)); px != curX {
				d.WriteString(" V" + pendingY + " H" + px)
				curX = px
			}
			pendingY = chartNum(y(float64(j+1) / n))
		}
		d.WriteString(" V" + pendingY + " H" + chartNum(left+pw))
		fmt.Fprintf(&c.b, `<path d="%s" fill="none" stroke="%s" stroke-width="2" stroke-linejoin="round"/>`+"\n",
			d.String(), chartColor(i))
	}

	if hasTarget {
		tx := x(target)
		c.line(tx, top, tx, top+ph, "#000000", 1.5, "6,4")
		// Left of the line when it is at the right edge, so it stays inside.
		if tx > left+pw-60 {
			c.text(tx-4, top+12, "end", 11, "#000000", "", "target")
		} else {
			c.text(tx+4, top+12, "start", 11, "#000000", "", "target")
		}
	}

	// Legend below the x axis title, in columns: name, p50, p99, n. The name
	// column is sized from the longest name (about 7 px per character).
	nameW := 80.0
	for _, s := range series {
		nameW = math.Max(nameW, 7*float64(len([]rune(s.Name)))+16)
	}
	for i, s := range series {
		ly := top + ph + belowAxis + rowH*float64(i) + 4
		lx := left + legendSwatchWidth + 6
		c.line(left, ly-4, left+legendSwatchWidth, ly-4, chartColor(i), 3, "")
		c.text(lx, ly, "start", 12, "#222222", "", s.Name)
		vals := sorted[i]
		if len(vals) == 0 {
			c.text(lx+nameW, ly, "start", 12, "#888888", "", "no data")
			continue
		}
		c.text(lx+nameW, ly, "start", 12, "#222222", "", "p50 "+chartFmtValue(percentile(vals, 50))+" ms")
		c.text(lx+nameW+130, ly, "start", 12, "#222222", "", "p99 "+chartFmtValue(percentile(vals, 99))+" ms")
		c.text(lx+nameW+260, ly, "start", 12, "#666666", "", "n="+strconv.Itoa(len(vals)))
	}
	return c.bytes()
}

// chartClean reports whether v can be plotted and returns it with its
// magnitude limited to [chartMinMag, chartMaxMag] (or zero).
func chartClean(v float64) (float64, bool) {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return 0, false
	case math.Abs(v) > chartMaxMag:
		return math.Copysign(chartMaxMag, v), true
	case math.Abs(v) < chartMinMag:
		return 0, true
	}
	return v, true
}

// chartAxis is a linear axis from lo to hi (both multiples of step).
type chartAxis struct{ lo, hi, step float64 }

// chartLinearAxis returns a linear axis covering [lo, hi] (lo <= hi, both
// finite) with a round step giving about five intervals.
func chartLinearAxis(lo, hi float64) chartAxis {
	span := hi - lo
	if !(span > 0) {
		span = math.Max(math.Abs(hi), 1)
	}
	step := chartNiceStep(span / 5)
	a := chartAxis{math.Floor(lo/step) * step, math.Ceil(hi/step) * step, step}
	if !(a.hi > a.lo) {
		a.hi = a.lo + 5*step
	}
	return a
}

// ticks returns the tick positions of a, at most 21 of them.
func (a chartAxis) ticks() []float64 {
	var ts []float64
	k0 := math.Round(a.lo / a.step)
	for i := 0.0; i <= 20; i++ {
		t := (k0 + i) * a.step
		if t > a.hi+a.step*1e-6 {
			break
		}
		ts = append(ts, t)
	}
	return ts
}

// label formats tick value t with as many decimals as the step needs.
func (a chartAxis) label(t float64) string {
	if math.Abs(t) < a.step*1e-6 {
		t = 0
	}
	if a.step >= 1e6 || a.step < 1e-4 {
		return strconv.FormatFloat(t, 'g', 4, 64)
	}
	decimals := 0
	if a.step < 1 {
		decimals = int(math.Ceil(-math.Log10(a.step) - 1e-9))
	}
	return strconv.FormatFloat(t, 'f', decimals, 64)
}

// chartNiceStep rounds x > 0 to the nearest 1, 2 or 5 × 10^n.
func chartNiceStep(x float64) float64 {
	if !(x > 0) || math.IsInf(x, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	switch f := x / p; {
	case f < 1.5:
		return p
	case f < 3.5:
		return 2 * p
	case f < 7.5:
		return 5 * p
	}
	return 10 * p
}

// chartLog is a log10 axis spanning the decades 10^loE to 10^hiE.
type chartLog struct{ loE, hiE float64 }

// chartLogAxis returns a log axis covering [lo, hi], 0 < lo <= hi.
func chartLogAxis(lo, hi float64) chartLog {
	a := chartLog{math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))}
	if a.hiE <= a.loE {
		a.hiE = a.loE + 1
	}
	return a
}

// ticks returns tick values: every decade (or every k-th one, k a round
// number, when there are more than about eight), plus 2× and 5× ticks when
// there are three decades or fewer.
func (a chartLog) ticks() []float64 {
	decades := a.hiE - a.loE
	stride := math.Max(1, math.Round(chartNiceStep(decades/8)))
	var ts []float64
	for e := math.Ceil(a.loE/stride) * stride; e <= a.hiE; e += stride {
		p := math.Pow(10, e)
		ts = append(ts, p)
		if decades <= 3 && e < a.hiE {
			ts = append(ts, 2*p, 5*p)
		}
	}
	return ts
}

// chartFmtLogTick formats a log axis tick (1, 2 or 5 × 10^n) without
// trailing zeros or float noise: "0.02", "1000", "1e+06", "1e-05".
func chartFmtLogTick(v float64) string {
	v, _ = strconv.ParseFloat(strconv.FormatFloat(v, 'g', 3, 64), 64)
	if v >= 1e-4 && v < 1e6 {
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// chartFmtValue formats a measured value with about three significant
// digits, switching to exponent form for very large or small magnitudes.
func chartFmtValue(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 1e6 || a < 1e-3:
		return strconv.FormatFloat(v, 'g', 3, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

// chartNum formats a pixel coordinate with one decimal; non-finite values
// (which the callers should never produce) become 0 so the SVG stays valid.
func chartNum(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		v = 0
	}
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}

// chartEscape escapes s for use in XML text and attribute values.
func chartEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s)) // never fails writing to a bytes.Buffer
	return b.String()
}

// chartCanvas accumulates the SVG elements of one chart.
type chartCanvas struct{ b strings.Builder }

// newChartCanvas starts a w×h SVG document with a white background and
// title both as the document <title> and as a heading at the top.
func newChartCanvas(w, h int, title string) *chartCanvas {
	c := &chartCanvas{}
	fmt.Fprintf(&c.b, `<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif">`+"\n",
		w, h, w, h)
	fmt.Fprintf(&c.b, "<title>%s</title>\n", chartEscape(title))
	fmt.Fprintf(&c.b, `<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>`+"\n", w, h)
	c.text(float64(w)/2, 26, "middle", 16, "#111111", ` font-weight="bold"`, title)
	return c
}

// text draws s at (x, y) with the given anchor, size and fill; extra is
// inserted verbatim into the element and must be valid attribute syntax.
func (c *chartCanvas) text(x, y float64, anchor string, size int, fill, extra, s string) {
	fmt.Fprintf(&c.b, `<text x="%s" y="%s" text-anchor="%s" font-size="%d" fill="%s"%s>%s</text>`+"\n",
		chartNum(x), chartNum(y), anchor, size, fill, extra, chartEscape(s))
}

// vtext draws s centred on (x, y), rotated to read bottom to top.
func (c *chartCanvas) vtext(x, y float64, size int, s string) {
	fmt.Fprintf(&c.b, `<text x="%s" y="%s" text-anchor="middle" font-size="%d" fill="#222222" transform="rotate(-90 %s %s)">%s</text>`+"\n",
		chartNum(x), chartNum(y), size, chartNum(x), chartNum(y), chartEscape(s))
}

// line draws a line segment; dash, if not empty, is a stroke-dasharray.
func (c *chartCanvas) line(x1, y1, x2, y2 float64, stroke string, width float64, dash string) {
	if dash != "" {
		dash = ` stroke-dasharray="` + dash + `"`
	}
	fmt.Fprintf(&c.b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="%s"%s/>`+"\n",
		chartNum(x1), chartNum(y1), chartNum(x2), chartNum(y2), stroke, chartNum(width), dash)
}

// rect draws a filled rectangle.
func (c *chartCanvas) rect(x, y, w, h float64, fill string) {
	fmt.Fprintf(&c.b, `<rect x="%s" y="%s" width="%s" height="%s" fill="%s"/>`+"\n",
		chartNum(x), chartNum(y), chartNum(w), chartNum(h), fill)
}

// bytes closes the document and returns it.
func (c *chartCanvas) bytes() []byte {
	c.b.WriteString("</svg>\n")
	return []byte(c.b.String())
}
