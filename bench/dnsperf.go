package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// timeoutSeconds is dnsperf's query timeout.
const timeoutSeconds = 2

// perfResult is one dnsperf run.
type perfResult struct {
	sent, completed, lost int64
	qps                   float64
	avgMs, maxMs          float64
	p50Ms, p99Ms          float64 // from the per-query latencies; -1 when not recorded
	rcodes                string
	respSize              int
	// cpuUs is the server process's CPU time (user and system) per
	// answer during the run, in µs; -1 when not read.
	cpuUs float64
	// sysUs is the part of cpuUs spent in the kernel.
	sysUs float64
	// busy is the server's CPU time over the run's wall time, as a share
	// of the server CPUs: near 1, the server was the bottleneck; -1 when
	// not read.
	busy float64
	// late counts answers that came after their query was counted lost
	// (blast only).
	late int64
}

// loadGen is a load generator: run sends s's queries to s for d, at rate
// (0: as fast as the server answers), recording each query's latency when
// perQuery.
type loadGen struct {
	name string
	run  func(ctx context.Context, s system, d time.Duration, rate int, perQuery bool) (perfResult, error)
}

// dnsperfGen is dnsperf as a loadGen.
func (b *bench) dnsperfGen() loadGen {
	return loadGen{"dnsperf", func(ctx context.Context, s system, d time.Duration, rate int, perQuery bool) (perfResult, error) {
		return b.dnsperf(ctx, s.addr, s.queries, d, rate, perQuery)
	}}
}

var (
	reSent      = regexp.MustCompile(`Queries sent:\s+(\d+)`)
	reCompleted = regexp.MustCompile(`Queries completed:\s+(\d+)`)
	reLost      = regexp.MustCompile(`Queries lost:\s+(\d+)`)
	reQPS       = regexp.MustCompile(`Queries per second:\s+([\d.]+)`)
	reAvg       = regexp.MustCompile(`Average Latency \(s\):\s+([\d.]+) \(min [\d.]+, max ([\d.]+)\)`)
	reRcodes    = regexp.MustCompile(`Response codes:\s+(.*)`)
	reSize      = regexp.MustCompile(`Average packet size:\s+request \d+, response (\d+)`)
)

// dnsperf runs dnsperf against addr with the queries in file for d. rate
// limits the queries per second (0: as fast as the server answers). With
// perQuery, each response's latency is recorded (dnsperf -v, written to a
// file and read afterwards, so the load generator pays only for the write)
// and p50/p99 are computed from them.
func (b *bench) dnsperf(ctx context.Context, addr, file string, d time.Duration, rate int, perQuery bool) (perfResult, error) {
	host, port, _ := strings.Cut(addr, ":")
	args := []string{"-s", host, "-p", port, "-d", file, "-l", strconv.Itoa(int(d.Seconds())),
		"-c", strconv.Itoa(b.cfg.clients), "-q", strconv.Itoa(b.cfg.outstanding),
		"-T", strconv.Itoa(cpuCount(b.cfg.clientCPUs)), "-t", strconv.Itoa(timeoutSeconds), "-e"}
	if rate > 0 {
		args = append(args, "-Q", strconv.Itoa(rate))
	}
	if perQuery {
		args = append(args, "-v")
	}
	bin, args := onCPUs(b.cfg.clientCPUs, "dnsperf", args)
	outPath := filepath.Join(b.work, "dnsperf.out")
	out, err := os.Create(outPath)
	if err != nil {
		return perfResult{}, err
	}
	defer os.Remove(outPath)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	out.Close()
	if err != nil {
		data, _ := os.ReadFile(outPath)
		return perfResult{}, fmt.Errorf("dnsperf: %v: %s", err, tailLines(string(data), 10))
	}
	r, err := parsePerf(outPath, perQuery)
	if err != nil {
		return r, err
	}
	// Every answer must be a real one: an error rcode is cheap to send and
	// would inflate the rate.
	if !strings.HasPrefix(r.rcodes, "NOERROR ") || !strings.Contains(r.rcodes, "(100.00%)") {
		return r, fmt.Errorf("dnsperf against %s: not every answer was NOERROR: %s", addr, r.rcodes)
	}
	return r, nil
}

// parsePerf reads dnsperf's output file.
func parsePerf(path string, perQuery bool) (perfResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return perfResult{}, err
	}
	defer f.Close()
	r := perfResult{p50Ms: -1, p99Ms: -1}
	var lat []float64
	var summary strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if perQuery && strings.HasPrefix(line, "> ") {
			fields := strings.Fields(line)
			if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil && len(fields) >= 5 {
				lat = append(lat, v*1000)
			}
			continue
		}
		summary.WriteString(line)
		summary.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return r, err
	}
	s := summary.String()
	num := func(re *regexp.Regexp, i int) (float64, bool) {
		m := re.FindStringSubmatch(s)
		if m == nil {
			return 0, false
		}
		v, err := strconv.ParseFloat(m[i], 64)
		return v, err == nil
	}
	var ok [4]bool
	var v float64
	v, ok[0] = num(reSent, 1)
	r.sent = int64(v)
	v, ok[1] = num(reCompleted, 1)
	r.completed = int64(v)
	v, _ = num(reLost, 1)
	r.lost = int64(v)
	r.qps, ok[2] = num(reQPS, 1)
	r.avgMs, ok[3] = num(reAvg, 1)
	r.avgMs *= 1000
	r.maxMs, _ = num(reAvg, 2)
	r.maxMs *= 1000
	if sz, found := num(reSize, 1); found {
		r.respSize = int(sz)
	}
	if m := reRcodes.FindStringSubmatch(s); m != nil {
		r.rcodes = strings.TrimSpace(m[1])
	}
	for _, o := range ok {
		if !o {
			return r, fmt.Errorf("dnsperf output not understood: %s", tailLines(s, 15))
		}
	}
	if perQuery && len(lat) > 0 {
		// A lost query counts as the timeout, so that dropping queries
		// does not make a system's tail look better.
		for range r.lost {
			lat = append(lat, timeoutSeconds*1000)
		}
		slices.Sort(lat)
		r.p50Ms, r.p99Ms = percentile(lat, 50), percentile(lat, 99)
	}
	return r, nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// median returns the median of vs (the lower middle for an even count).
func median(vs []float64) float64 { return pct(vs, 50) }
