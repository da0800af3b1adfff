// Command glimpse-agent serves the glimpse topology of the local Consul
// agent's datacenters over DNS and HTTP. See the README for its flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"

	httpapi "github.com/rugby110/glimpse/http"
	"github.com/rugby110/glimpse/internal/agent"
	"github.com/rugby110/glimpse/internal/version"
)

// errVersion ends run after -version printed the version.
var errVersion = errors.New("version printed")

func main() {
	err := run(os.Args[1:], os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp), errors.Is(err, errVersion):
	case err != nil:
		fmt.Fprintln(os.Stderr, "glimpse-agent:", err) // one line, then a non-zero exit
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	cfg := agent.DefaultConfig()
	fs := flag.NewFlagSet("glimpse-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported in one line by main
	fs.StringVar(&cfg.ConsulAddr, "consul.addr", "", "the local Consul agent's HTTP address (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&cfg.ConsulToken, "consul.token", "", "Consul ACL token with read access (default $CONSUL_HTTP_TOKEN)")
	fs.StringVar(&cfg.ConsulTokenFile, "consul.token-file", "", "file holding the Consul ACL token, not readable by others (keeps it out of ps and the command line)")
	fs.StringVar(&cfg.ConsulCAFile, "consul.ca-file", "", "PEM file of the CA that signed an https Consul agent's certificate (default $CONSUL_CACERT, else the system's roots)")
	fs.DurationVar(&cfg.ConsulStartTimeout, "consul.start-timeout", cfg.ConsulStartTimeout, "how long to wait for the Consul agent at start")
	fs.DurationVar(&cfg.Watch.Wait, "consul.wait", cfg.Watch.Wait, "longest wait of a zone's own blocking queries (its product list, servers and checks); a Consul agent that stops answering shows within it")
	fs.DurationVar(&cfg.Watch.ProductWait, "consul.product-wait", cfg.Watch.ProductWait, "longest wait of a product's blocking query (one that waits it out costs the Consul agent a whole read of the product)")
	rateLimit := fs.Float64("consul.rate", float64(cfg.Watch.Rate), "Consul requests per second allowed to each watcher (token bucket)")
	fs.IntVar(&cfg.Watch.Burst, "consul.burst", cfg.Watch.Burst, "burst of each watcher's token bucket")
	fs.DurationVar(&cfg.Watch.MaxBackoff, "consul.max-backoff", cfg.Watch.MaxBackoff, "longest back-off between retries after Consul errors")
	fs.StringVar(&cfg.Zone, "zone", "", "the local zone (default: the Consul agent's datacenter)")
	fs.IntVar(&cfg.Watch.MaxConns, "consul.max-conns", cfg.Watch.MaxConns, "most connections held to the Consul agent, which the host's other Consul clients share (its limits.http_max_conns_per_client is 200 by default)")
	fs.DurationVar(&cfg.Watch.Idle, "watch.idle", cfg.Watch.Idle, "how long a product, or a remote zone, stays watched after its last read")
	fs.DurationVar(&cfg.Watch.Idle, "zone.idle", cfg.Watch.Idle, "the same as -watch.idle (the older name)")
	pins := fs.String("watch.pin", "", "comma-separated patterns of local products watched from the start and never dropped (* for all; shell glob syntax)")
	fs.DurationVar(&cfg.FirstWait, "watch.first-wait", cfg.FirstWait, "how long a read waits for the first result of a product or remote zone before SERVFAIL or 503")
	fs.StringVar(&cfg.DNSAddr, "dns.addr", cfg.DNSAddr, "DNS address, UDP and TCP")
	fs.StringVar(&cfg.Domain, "dns.domain", cfg.Domain, "the DNS domain glimpse is authoritative for")
	fs.IntVar(&cfg.UDPSockets, "dns.udp-sockets", cfg.UDPSockets, "UDP sockets bound with SO_REUSEPORT (default: the number of CPUs)")
	fs.IntVar(&cfg.DNSMaxTCPConns, "dns.tcp-max-conns", cfg.DNSMaxTCPConns, "DNS TCP connections open at once; a new one beyond that closes the quietest")
	fs.DurationVar(&cfg.TTL, "dns.ttl", cfg.TTL, "TTL of positive DNS answers")
	fs.DurationVar(&cfg.NegativeTTL, "dns.negative-ttl", cfg.NegativeTTL, "SOA minimum: how long resolvers cache NXDOMAIN and NODATA")
	fs.BoolVar(&cfg.AllowWarning, "dns.allow-warning", cfg.AllowWarning, "answer with instances whose health is warning too")
	fs.IntVar(&cfg.MaxRecords, "dns.max-records", cfg.MaxRecords, "most records in one SRV, A or AAAA answer; larger sets are answered in rotating subsets of this size")
	fs.BoolVar(&cfg.DelegateZones, "dns.delegate-zones", cfg.DelegateZones, "make each zone a delegation: NS <zone> names its Consul servers (only where those hosts serve glimpse on port 53)")
	fs.DurationVar(&cfg.FirstWait, "dns.remote-wait", cfg.FirstWait, "the same as -watch.first-wait (the older name)")
	fs.StringVar(&cfg.HTTPAddr, "http.addr", cfg.HTTPAddr, "HTTP address: API, websocket, /metrics, /healthz, /readyz")
	fs.IntVar(&cfg.History, "http.history", cfg.History, "recent address changes kept for websocket subscribers resuming from an index")
	fs.IntVar(&cfg.Subscribe.MaxSubscribers, "http.max-subscribers", cfg.Subscribe.MaxSubscribers, "most websocket subscriptions open at once")
	fs.IntVar(&cfg.Subscribe.MaxLongPolls, "http.max-long-polls", cfg.Subscribe.MaxLongPolls, "most long-polls waiting at once (more: 503 with Retry-After)")
	fs.IntVar(&cfg.Subscribe.MaxAddresses, "http.max-addresses", cfg.Subscribe.MaxAddresses, "most addresses one websocket subscription may name")
	origins := fs.String("http.allowed-origins", "", "comma-separated browser origins allowed to open websockets besides the agent's own (* for any)")
	fs.BoolVar(&cfg.Pprof, "http.pprof", cfg.Pprof, "serve Go's profiles under /debug/pprof/ on -http.addr (off by default: profiles cost CPU and show internals)")
	fs.StringVar(&cfg.DataDir, "data.dir", cfg.DataDir, "directory of the agent's durable state (the providers' recorded instances); created if missing")
	fs.StringVar(&cfg.ProvidersSocket, "providers.socket", cfg.ProvidersSocket, "Unix socket where local providers write as their user, mode 0660 (empty: none)")
	fs.StringVar(&cfg.ProvidersSocketGroup, "providers.socket-group", cfg.ProvidersSocketGroup, "group (name or number) of -providers.socket, whose members may write (default: the agent's group)")
	fs.StringVar(&cfg.ProvidersTokens, "providers.tokens", cfg.ProvidersTokens, "file of bearer tokens that may write providers over TCP, one '<name> <token> <provider patterns>' per line (empty: writes over TCP are refused)")
	fs.BoolVar(&cfg.ProviderAllowRemote, "providers.allow-remote", cfg.ProviderAllowRemote, "let non-loopback clients use the providers API")
	fs.DurationVar(&cfg.ReconcileEvery, "providers.reconcile", cfg.ReconcileEvery, "how often the providers' recorded instances are applied to the Consul agent again")
	fs.DurationVar(&cfg.ProbeEvery, "providers.probe", cfg.ProbeEvery, "how often the Consul agent's registrations are listed to notice its restart and reconcile at once")
	fs.StringVar(&cfg.ProvidersDir, "providers.dir", cfg.ProvidersDir, "directory of <provider>.json files applied like PUT /v1/providers/<provider> (empty: none); while it is missing nothing changes")
	fs.DurationVar(&cfg.ProvidersDirPoll, "providers.dir-poll", cfg.ProvidersDirPoll, "how often -providers.dir is checked for changed files")
	showVersion := fs.Bool("version", false, "print the version, commit and Go version, and exit")
	level := fs.String("log.level", "info", "log level: debug, info, warn or error")
	format := fs.String("log.format", "json", "log format: json or console")

	if err := envDefaults(fs); err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "Usage: glimpse-agent [flags]; every flag can also be set as GLIMPSE_<FLAG> (GLIMPSE_DNS_ADDR for -dns.addr).")
			fs.PrintDefaults()
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *showVersion {
		fmt.Fprintln(os.Stdout, version.String("glimpse-agent"))
		return errVersion
	}
	if *rateLimit <= 0 || cfg.Watch.Burst < 1 {
		return errors.New("-consul.rate and -consul.burst must be positive")
	}
	cfg.Watch.Rate = rate.Limit(*rateLimit)
	if cfg.Watch.Wait <= 0 || cfg.Watch.ProductWait <= 0 || cfg.Watch.MaxBackoff <= 0 || cfg.Watch.Idle <= 0 || cfg.FirstWait < 0 {
		return errors.New("-consul.wait, -consul.product-wait, -consul.max-backoff and -watch.idle must be positive, -watch.first-wait not negative")
	}
	for _, p := range strings.Split(*pins, ",") { // checked by agent.New
		if p = strings.TrimSpace(p); p != "" {
			cfg.Watch.Pins = append(cfg.Watch.Pins, p)
		}
	}
	if cfg.History < 1 || cfg.Subscribe.MaxSubscribers < 1 || cfg.Subscribe.MaxLongPolls < 1 || cfg.Subscribe.MaxAddresses < 1 {
		return errors.New("-http.history, -http.max-subscribers, -http.max-long-polls and -http.max-addresses must be at least 1")
	}
	if *origins != "" {
		for _, o := range strings.Split(*origins, ",") {
			if o = strings.TrimSpace(o); o != "" {
				cfg.Subscribe.AllowedOrigins = append(cfg.Subscribe.AllowedOrigins, o)
			}
		}
	}
	if cfg.ReconcileEvery <= 0 || cfg.ProbeEvery <= 0 || cfg.ProvidersDirPoll <= 0 || cfg.DataDir == "" {
		return errors.New("-providers.reconcile, -providers.probe and -providers.dir-poll must be positive and -data.dir not empty")
	}
	if cfg.MaxRecords < 1 || cfg.MaxRecords > 1000 {
		return errors.New("-dns.max-records must be between 1 and 1000")
	}
	if cfg.UDPSockets < 1 || cfg.DNSMaxTCPConns < 1 {
		return errors.New("-dns.udp-sockets and -dns.tcp-max-conns must be at least 1")
	}
	log, err := newLogger(*level, *format)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck // nothing to do about it at exit

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Connections, long-polls and subscriptions are capped below the open
	// files limit; raising it to what the system allows makes room.
	if _, err := httpapi.RaiseFileLimit(); err != nil {
		log.Warn("could not raise the open files limit", zap.Error(err))
	}
	a, err := agent.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// envDefaults sets each flag from its environment variable, GLIMPSE_ and the
// flag's name in upper case with dots and dashes as underscores
// (GLIMPSE_DNS_ADDR for -dns.addr). Flags on the command line win.
func envDefaults(fs *flag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "version" {
			return // an action, not a setting
		}
		name := "GLIMPSE_" + strings.NewReplacer(".", "_", "-", "_").Replace(strings.ToUpper(f.Name))
		if v, ok := os.LookupEnv(name); ok && err == nil {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}

func newLogger(level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("-log.level: %w", err)
	}
	var zc zap.Config
	switch format {
	case "json":
		zc = zap.NewProductionConfig()
	case "console":
		zc = zap.NewDevelopmentConfig()
		zc.Development = false
		zc.DisableStacktrace = true
	default:
		return nil, fmt.Errorf("-log.format: %q is neither json nor console", format)
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil // one line per event; there is no per-query logging to sample
	return zc.Build()
}
