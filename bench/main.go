// Command bench measures glimpse-agent, side by side in one run, against
// Consul's own DNS interface and against a ceiling (a minimal miekg/dns
// server answering a fixed answer of the same size), and measures change
// propagation, websocket fan-out and memory at scale. `make bench` runs it
// and writes bench/RESULTS.md and its charts.
//
// Everything is real: a Consul dev agent from tools/consul, the
// glimpse-agent binary, dnsperf from Debian. On a machine with two or more
// CPUs, the servers (Consul, glimpse-agent, the ceiling) run on the CPUs of
// -server-cpus and the load generators (dnsperf, this program's clients) on
// -client-cpus, so that a server and its load never compete for a core and
// every system gets the same share of the machine. In the half-load runs,
// where the tail latency is measured, Consul runs as SCHED_IDLE while
// another server is measured (-half-load.consul-idle): the dev agent
// stands in for the datacenter's servers too, and their chores (a summary
// of the whole catalog every 9 s, among others) do not run on a glimpse
// host.
//
// Usage:
//
//	bench [flags]             run the benchmark
//	bench ceiling [flags]     the ceiling DNS server (started by bench)
//	bench echo [flags]        the UDP echo latency floor (started by bench)
//	bench blast [flags]       the batched DNS load generator (started by bench)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// config is the benchmark's configuration, from flags.
type config struct {
	consulBin, agentBin, selfBin string
	products, jobs, perJob       int
	runs                         int
	duration                     time.Duration
	soak                         time.Duration // length of the soak section
	agentArgs                    []string      // extra glimpse-agent flags
	clients, outstanding         int
	perQuery                     bool
	consulIdle                   bool
	changes                      int
	subscribers                  int
	longPolls                    int
	scale                        []int
	sections                     map[string]bool
	serverCPUs, clientCPUs       string
	out, chartDir                string
}

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "ceiling" || os.Args[1] == "echo" || os.Args[1] == "blast") {
		sub := map[string]func([]string) error{"ceiling": ceilingMain, "echo": echoMain, "blast": blastMain}[os.Args[1]]
		if err := sub(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "bench %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	cfg := &config{}
	var scale, sections string
	fs.StringVar(&cfg.consulBin, "consul", "bin/consul", "Consul binary")
	fs.StringVar(&cfg.agentBin, "agent", "bin/glimpse-agent", "glimpse-agent binary")
	fs.IntVar(&cfg.products, "products", 1000, "products in the topology")
	fs.IntVar(&cfg.jobs, "jobs", 5, "jobs per product")
	fs.IntVar(&cfg.perJob, "instances", 4, "instances per job")
	fs.IntVar(&cfg.runs, "runs", 5, "runs per system for each DNS figure (the median is reported)")
	fs.DurationVar(&cfg.duration, "duration", 10*time.Second, "length of one dnsperf run")
	fs.IntVar(&cfg.clients, "dnsperf.clients", 16, "dnsperf -c: client sockets")
	fs.IntVar(&cfg.outstanding, "dnsperf.outstanding", 256, "dnsperf -q: queries outstanding")
	fs.BoolVar(&cfg.perQuery, "dnsperf.per-query", true, "record each query's latency (dnsperf -v) in the half-load runs, for p50/p99")
	fs.BoolVar(&cfg.consulIdle, "half-load.consul-idle", true, "run Consul as SCHED_IDLE during the other servers' half-load runs (it stands in for the datacenter's servers, whose chores a glimpse host does not run)")
	fs.IntVar(&cfg.changes, "changes", 200, "Consul changes in the propagation test")
	fs.IntVar(&cfg.subscribers, "subscribers", 10000, "websocket subscribers in the fan-out test")
	fs.IntVar(&cfg.longPolls, "long-polls", 10000, "long-polls waiting in the long-poll test")
	fs.StringVar(&scale, "scale", "20000,100000", "instance counts of the scale test (multiples of jobs×instances)")
	fs.StringVar(&sections, "sections", "dns,propagation,fanout,longpoll,scale,ondemand", `sections to run; "soak" (not a default) runs mixed load for -soak`)
	fs.DurationVar(&cfg.soak, "soak", 10*time.Minute, "length of the soak section")
	var agentArgs string
	fs.StringVar(&agentArgs, "agent.args", "", "extra glimpse-agent flags, space-separated (for example \"-http.history 2048\")")
	fs.StringVar(&cfg.serverCPUs, "server-cpus", "auto", `CPUs for the servers (taskset list); "auto": 0 on a machine with 2+ CPUs; "": no pinning`)
	fs.StringVar(&cfg.clientCPUs, "client-cpus", "auto", `CPUs for the load generators; "auto": the other CPUs`)
	fs.StringVar(&cfg.out, "out", "bench/RESULTS.md", "results file (Markdown)")
	fs.StringVar(&cfg.chartDir, "charts", "bench", "directory of the SVG charts")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg.agentArgs = strings.Fields(agentArgs)
	if cfg.products < 1 || cfg.jobs < 1 || cfg.perJob < 1 || cfg.runs < 1 || cfg.changes < 4 || cfg.subscribers < 1 {
		return nil, fmt.Errorf("-products, -jobs, -instances, -runs and -subscribers must be ≥1, -changes ≥4")
	}
	cfg.sections = map[string]bool{}
	for _, s := range strings.Split(sections, ",") {
		switch s = strings.TrimSpace(s); s {
		case "dns", "propagation", "fanout", "longpoll", "scale", "ondemand", "soak":
			cfg.sections[s] = true
		case "":
		default:
			return nil, fmt.Errorf("unknown section %q", s)
		}
	}
	for _, s := range strings.Split(scale, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n <= 0 || n%(cfg.jobs*cfg.perJob) != 0 {
			return nil, fmt.Errorf("-scale: %q is not a positive multiple of %d", s, cfg.jobs*cfg.perJob)
		}
		cfg.scale = append(cfg.scale, n)
	}
	var err error
	for _, p := range []*string{&cfg.consulBin, &cfg.agentBin} {
		if *p, err = filepath.Abs(*p); err != nil {
			return nil, err
		}
		if _, err := os.Stat(*p); err != nil {
			return nil, fmt.Errorf("%w (run make bench, which builds it)", err)
		}
	}
	if cfg.selfBin, err = os.Executable(); err != nil {
		return nil, err
	}
	return cfg, nil
}
