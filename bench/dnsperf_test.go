package main

import (
	"os"
	"path/filepath"
	"testing"
)

// A dnsperf 2.10 output with -v, as the harness reads it.
const dnsperfOutput = `DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 5399 -d q.txt -l 1 -v -Q 5
[Status] Sending queries (to 127.0.0.1:5399)
> NOERROR example.com A 0.000175
> NOERROR example.com A 0.000180
> NOERROR example.com A 0.000245
> NOERROR example.com A 0.000180
> NOERROR example.com A 0.000298
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         5
  Queries completed:    5 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 5 (100.00%)
  Average packet size:  request 29, response 61
  Run time (s):         1.000237
  Queries per second:   4.998815

  Average Latency (s):  0.000215 (min 0.000175, max 0.000298)
  Latency StdDev (s):   0.000054
`

func TestParsePerf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(path, []byte(dnsperfOutput), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := parsePerf(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if r.sent != 5 || r.completed != 5 || r.lost != 0 || r.qps < 4.99 || r.qps > 5 || r.respSize != 61 || r.rcodes != "NOERROR 5 (100.00%)" {
		t.Errorf("summary: %+v", r)
	}
	if r.avgMs < 0.2149 || r.avgMs > 0.2151 || r.maxMs < 0.2979 || r.maxMs > 0.2981 {
		t.Errorf("latency: avg %v max %v", r.avgMs, r.maxMs)
	}
	if r.p50Ms < 0.1799 || r.p50Ms > 0.1801 || r.p99Ms < 0.2979 || r.p99Ms > 0.2981 {
		t.Errorf("percentiles: p50 %v p99 %v", r.p50Ms, r.p99Ms)
	}
	if r, err := parsePerf(path, false); err != nil || r.p99Ms != -1 {
		t.Errorf("without per-query latencies: %+v %v", r, err)
	}
	if err := os.WriteFile(path, []byte("dnsperf: error\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := parsePerf(path, false); err == nil {
		t.Error("garbage output parsed")
	}
}
