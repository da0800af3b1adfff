package main

import (
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
)

// chartCheckSVG parses svg as XML, checks that its root is an SVG element in
// the SVG namespace and that no "NaN" or "Inf" leaked into it, and returns
// the concatenated character data (one text node per line).
func chartCheckSVG(t *testing.T, svg []byte) string {
	t.Helper()
	s := string(svg)
	for _, bad := range []string{"NaN", "Inf"} {
		if strings.Contains(s, bad) {
			t.Errorf("output contains %q:\n%s", bad, s)
		}
	}
	dec := xml.NewDecoder(strings.NewReader(s))
	var text strings.Builder
	depth := 0
	sawRoot := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("invalid XML: %v\n%s", err, s)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				if sawRoot {
					t.Fatalf("more than one root element")
				}
				sawRoot = true
				if tok.Name.Local != "svg" || tok.Name.Space != "http://www.w3.org/2000/svg" {
					t.Fatalf("root element is %v, want svg in the SVG namespace", tok.Name)
				}
			}
			depth++
		case xml.EndElement:
			depth--
		case xml.CharData:
			if depth > 0 {
				text.Write(tok)
				text.WriteByte('\n')
			}
		}
	}
	if !sawRoot {
		t.Fatalf("no root element")
	}
	return text.String()
}

// chartWantText fails unless every string in want occurs in text.
func chartWantText(t *testing.T, text string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("text %q not found in chart text:\n%s", w, text)
		}
	}
}

func TestChartPercentile(t *testing.T) {
	tests := []struct {
		sorted []float64
		p      float64
		want   float64
	}{
		{nil, 50, 0},
		{[]float64{7}, 0, 7},
		{[]float64{7}, 50, 7},
		{[]float64{7}, 100, 7},
		{[]float64{1, 2, 3}, 50, 2},
		{[]float64{1, 2, 3, 4}, 50, 2},
		{[]float64{1, 2, 3, 4}, 51, 3},
		{[]float64{1, 2, 3, 4}, 25, 1},
		{[]float64{1, 2, 3, 4}, 100, 4},
		{[]float64{1, 2, 3, 4}, 0, 1},
		{[]float64{1, 2, 3, 4}, -5, 1},
		{[]float64{1, 2, 3, 4}, 150, 4},
		{[]float64{1, 2, 3, 4}, math.NaN(), 1},
		// Textbook nearest-rank example.
		{[]float64{15, 20, 35, 40, 50}, 5, 15},
		{[]float64{15, 20, 35, 40, 50}, 30, 20},
		{[]float64{15, 20, 35, 40, 50}, 40, 20},
		{[]float64{15, 20, 35, 40, 50}, 50, 35},
		{[]float64{15, 20, 35, 40, 50}, 100, 50},
	}
	for _, tt := range tests {
		if got := percentile(tt.sorted, tt.p); got != tt.want {
			t.Errorf("percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
		}
	}

	// p99 of 1..100 is 99 and p99.9 of 1..1000 is 999 despite p not being
	// exactly representable.
	seq := func(n int) []float64 {
		s := make([]float64, n)
		for i := range s {
			s[i] = float64(i + 1)
		}
		return s
	}
	if got := percentile(seq(100), 99); got != 99 {
		t.Errorf("p99 of 1..100 = %v, want 99", got)
	}
	if got := percentile(seq(1000), 99.9); got != 999 {
		t.Errorf("p99.9 of 1..1000 = %v, want 999", got)
	}
}

func TestChartBar(t *testing.T) {
	tests := []struct {
		name  string
		title string
		unit  string
		bars  []Bar
		want  []string
	}{
		{
			name:  "typical",
			title: "Queries per second",
			unit:  "qps",
			bars: []Bar{
				{Label: "glimpse", Value: 95000, Note: "0.95x ceiling"},
				{Label: "consul", Value: 21000},
				{Label: "ceiling", Value: 100000},
			},
			want: []string{"Queries per second", "qps", "glimpse", "consul", "ceiling", "0.95x ceiling", "95000", "0"},
		},
		{
			name:  "escaping",
			title: `p99 <latency> & "quotes" 'too'`,
			unit:  "ms & µs",
			bars:  []Bar{{Label: "<a&b>", Value: 1.5, Note: `"n" < 2`}},
			want:  []string{`p99 <latency> & "quotes" 'too'`, "ms & µs", "<a&b>", `"n" < 2`, "1.50"},
		},
		{name: "empty", title: "Nothing", unit: "x", want: []string{"Nothing", "no data"}},
		{name: "zeros", title: "Zeros", unit: "ms", bars: []Bar{{Label: "a"}, {Label: "b"}}, want: []string{"a", "b", "1.0"}},
		{
			name:  "non-finite and negative",
			title: "Bad values",
			unit:  "ms",
			bars: []Bar{
				{Label: "nan", Value: math.NaN()},
				{Label: "posinf", Value: math.Inf(1)},
				{Label: "neginf", Value: math.Inf(-1)},
				{Label: "neg", Value: -3},
				{Label: "ok", Value: 2},
			},
			want: []string{"nan", "posinf", "neginf", "neg", "ok", "n/a", "-3.00", "2.00"},
		},
		{
			name:  "huge range",
			title: "Huge",
			unit:  "ns",
			bars:  []Bar{{Label: "tiny", Value: 1e-320}, {Label: "big", Value: math.MaxFloat64}, {Label: "mid", Value: 1e150}},
			want:  []string{"tiny", "big", "mid"},
		},
		{name: "tiny", title: "Tiny", unit: "s", bars: []Bar{{Label: "t", Value: 3e-7}}, want: []string{"3e-07"}},
		{name: "single", title: "One", unit: "ops", bars: []Bar{{Label: "only", Value: 42}}, want: []string{"only", "42.0", "50"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := chartCheckSVG(t, barChartSVG(tt.title, tt.unit, tt.bars))
			chartWantText(t, text, tt.want...)
		})
	}
}

func TestChartCDF(t *testing.T) {
	uniform := make([]float64, 1000)
	for i := range uniform {
		uniform[i] = float64((i*7919)%1000) / 10 // 0.0 .. 99.9, shuffled
	}
	tests := []struct {
		name     string
		title    string
		series   []Series
		targetMs float64
		want     []string
	}{
		{
			name:  "typical linear",
			title: "Lookup latency",
			series: []Series{
				{Name: "glimpse", Values: []float64{3, 1, 2, 5, 4}},
				{Name: "consul", Values: []float64{6, 8, 7, 9, 10}},
			},
			targetMs: 8,
			want: []string{"Lookup latency", "glimpse", "consul", "target", "latency (ms)",
				"p50 3.00 ms", "p99 5.00 ms", "p50 8.00 ms", "p99 10.0 ms", "100%", "n=5"},
		},
		{
			name:     "log scale with zeros",
			title:    "Log <scale> & zeros",
			series:   []Series{{Name: "a&b", Values: append([]float64{0, 0}, uniform...)}},
			targetMs: 50,
			want:     []string{"Log <scale> & zeros", "a&b", "log scale", "target", "n=1002"},
		},
		{name: "no series", title: "Empty", want: []string{"Empty", "no data"}},
		{name: "no series with target", title: "Target only", targetMs: 10, want: []string{"no data", "target"}},
		{
			name:   "empty series",
			title:  "Empty series",
			series: []Series{{Name: "none"}, {Name: "also none", Values: []float64{}}},
			want:   []string{"none", "also none", "no data"},
		},
		{name: "single value", title: "One", series: []Series{{Name: "s", Values: []float64{4.2}}}, want: []string{"p50 4.20 ms", "n=1"}},
		{name: "all equal", title: "Equal", series: []Series{{Name: "s", Values: []float64{7, 7, 7}}}, want: []string{"p99 7.00 ms"}},
		{name: "all zero", title: "Zero", series: []Series{{Name: "z", Values: []float64{0, 0, 0}}}, targetMs: -1, want: []string{"p50 0 ms"}},
		{name: "negative", title: "Negative", series: []Series{{Name: "n", Values: []float64{-5, 0, 0.001, 100}}}, want: []string{"p50 0 ms"}},
		{
			name:  "huge range",
			title: "Huge",
			series: []Series{
				{Name: "wide", Values: []float64{1e-320, 1e-200, 1, 1e200, math.MaxFloat64}},
				{Name: "junk", Values: []float64{math.NaN(), math.Inf(1), math.Inf(-1), 5}},
			},
			targetMs: math.Inf(1),
			want:     []string{"wide", "junk", "n=5", "n=1", "log scale"},
		},
		{
			name:     "huge linear",
			title:    "Huge linear",
			series:   []Series{{Name: "pm", Values: []float64{-math.MaxFloat64, math.MaxFloat64}}},
			targetMs: math.NaN(),
			want:     []string{"pm"},
		},
		{
			name:   "many series",
			title:  "Many",
			series: []Series{{"s0", []float64{1}}, {"s1", []float64{2}}, {"s2", []float64{3}}, {"s3", []float64{4}}, {"s4", []float64{5}}, {"s5", []float64{6}}, {"s6", []float64{7}}, {"s7", []float64{8}}, {"s8", []float64{9}}},
			want:   []string{"s0", "s8"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svg := cdfChartSVG(tt.title, tt.series, tt.targetMs)
			text := chartCheckSVG(t, svg)
			chartWantText(t, text, tt.want...)
			if strings.Contains(text, "target") != (tt.targetMs > 0 && !math.IsInf(tt.targetMs, 0)) {
				t.Errorf("target line presence wrong for targetMs=%v", tt.targetMs)
			}
		})
	}
}

// TestChartCDFPathSize checks that a large series is drawn with a path whose
// size is bounded by the plot width rather than the sample count.
func TestChartCDFPathSize(t *testing.T) {
	vals := make([]float64, 200000)
	for i := range vals {
		vals[i] = 1 + float64(i%9973)*0.37
	}
	svg := cdfChartSVG("Big", []Series{{Name: "big", Values: vals}}, 0)
	chartCheckSVG(t, svg)
	if len(svg) > 200000 {
		t.Errorf("SVG is %d bytes for %d samples; want the path to be merged per pixel", len(svg), len(vals))
	}
}

// TestChartLogTickLabels checks that log axis labels are free of trailing
// zeros and floating-point noise.
func TestChartLogTickLabels(t *testing.T) {
	var got []string
	for _, v := range chartLogAxis(0.03, 400).ticks() {
		got = append(got, chartFmtLogTick(v))
	}
	want := "0.01 0.1 1 10 100 1000"
	if strings.Join(got, " ") != want {
		t.Errorf("labels = %q, want %q", strings.Join(got, " "), want)
	}
	got = got[:0]
	for _, v := range chartLogAxis(0.011, 0.9).ticks() {
		got = append(got, chartFmtLogTick(v))
	}
	want = "0.01 0.02 0.05 0.1 0.2 0.5 1"
	if strings.Join(got, " ") != want {
		t.Errorf("labels = %q, want %q", strings.Join(got, " "), want)
	}
	for v, w := range map[float64]string{1e-5: "1e-05", 2e6: "2e+06", 1e300: "1e+300"} {
		if g := chartFmtLogTick(v); g != w {
			t.Errorf("chartFmtLogTick(%v) = %q, want %q", v, g, w)
		}
	}
}
