// Package agent wires glimpse-agent together: the Consul client, the
// watchers, the cache, and the DNS and HTTP servers. cmd/glimpse-agent only
// turns flags into a Config; tests run the same wiring in-process.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/rugby110/glimpse/cache"
	"github.com/rugby110/glimpse/dns"
	httpapi "github.com/rugby110/glimpse/http"
	"github.com/rugby110/glimpse/internal/consulhttp"
	"github.com/rugby110/glimpse/internal/sdnotify"
	"github.com/rugby110/glimpse/provider"
	"github.com/rugby110/glimpse/watch"
)

// Config is everything the agent is configured with.
type Config struct {
	// ConsulAddr is the local Consul agent's HTTP address; empty means
	// $CONSUL_HTTP_ADDR or 127.0.0.1:8500. CONSUL_HTTP_TOKEN and Consul's
	// TLS variables are honoured.
	ConsulAddr string
	// ConsulToken overrides $CONSUL_HTTP_TOKEN.
	ConsulToken string
	// ConsulTokenFile holds the ACL token instead (not shown by ps nor
	// in /debug/pprof/cmdline); it must not be readable by others.
	ConsulTokenFile string
	// ConsulCAFile, for an https ConsulAddr, is the PEM file of the CA
	// that signed the Consul agent's certificate; it overrides
	// $CONSUL_CACERT. Empty: the environment's, or the system's roots.
	ConsulCAFile string
	// ConsulStartTimeout is how long to wait for the Consul agent at start.
	ConsulStartTimeout time.Duration
	// Zone is the local zone; empty means the Consul agent's datacenter.
	Zone string

	DNSAddr string
	// Domain is the DNS domain glimpse is authoritative for.
	Domain     string
	UDPSockets int
	// DNSMaxTCPConns bounds the DNS TCP connections open at once.
	DNSMaxTCPConns int
	TTL            time.Duration
	// NegativeTTL is the SOA minimum: how long NXDOMAIN and NODATA are cached.
	NegativeTTL  time.Duration
	AllowWarning bool
	// MaxRecords caps the records of one DNS answer RRset (0: 100); larger
	// sets are served as rotating subsets.
	MaxRecords int
	// DelegateZones answers NS at zone names with the zone's Consul
	// servers, making each zone a delegation (see docs/resolvers.md).
	DelegateZones bool
	// FirstWait bounds how long a read (DNS query or HTTP lookup) waits for
	// the first result of a product or remote zone nobody read before.
	FirstWait time.Duration

	HTTPAddr string
	// Pprof serves Go's profiles under /debug/pprof/ on HTTPAddr.
	Pprof bool
	// History is how many recent address changes are kept for websocket
	// subscribers resuming from an index.
	History int
	// Subscribe limits websocket subscriptions.
	Subscribe httpapi.SubscribeLimits

	Watch watch.Config

	// DataDir holds the agent's durable state: the providers' recorded
	// instances, under DataDir/providers. Created if missing.
	DataDir string
	// ProviderAllowRemote lets non-loopback clients use the providers API.
	ProviderAllowRemote bool
	// ProvidersSocket is the Unix socket where local providers write as
	// their user (empty: none); ProvidersSocketGroup its group (empty: the
	// agent's).
	ProvidersSocket, ProvidersSocketGroup string
	// ProvidersTokens is the file of bearer tokens that may write
	// providers over TCP (empty: none may).
	ProvidersTokens string
	// ReconcileEvery is how often the providers' recorded state is applied
	// to the Consul agent again, repairing drift.
	ReconcileEvery time.Duration
	// ProbeEvery is how often the Consul agent's registrations are listed
	// to notice its restart and reconcile at once.
	ProbeEvery time.Duration
	// ProvidersDir, if set, is a directory of <provider>.json files applied
	// like PUT /v1/providers/<provider>. While it is missing nothing changes
	// (and the problem is reported).
	ProvidersDir string
	// ProvidersDirPoll is how often ProvidersDir is checked for changes.
	ProvidersDirPoll time.Duration
}

// DefaultConfig returns glimpse-agent's defaults.
func DefaultConfig() Config {
	return Config{
		ConsulStartTimeout: 30 * time.Second,
		DNSAddr:            "127.0.0.1:5959",
		Domain:             "srv.glimpse.io.",
		UDPSockets:         runtime.NumCPU(),
		DNSMaxTCPConns:     dns.DefaultMaxTCPConns,
		TTL:                5 * time.Second,
		NegativeTTL:        5 * time.Second,
		MaxRecords:         dns.DefaultMaxRecords,
		FirstWait:          2 * time.Second,
		HTTPAddr:           "127.0.0.1:5960",
		History:            cache.HistorySize,
		Subscribe:          httpapi.DefaultSubscribeLimits(),
		Watch:              watch.DefaultConfig(),
		DataDir:            "/var/lib/glimpse",
		ReconcileEvery:     provider.DefaultReconcileEvery,
		ProbeEvery:         provider.DefaultProbeEvery,
		ProvidersDirPoll:   provider.DefaultDirPoll,
		ProvidersSocket:    DefaultProvidersSocket,
	}
}

// Agent is a running glimpse-agent.
type Agent struct {
	// dataLock holds the data directory's lock until Run returns.
	dataLock *os.File
	cfg      Config
	log      *zap.Logger
	Cache    *cache.Cache
	Registry *prometheus.Registry
	watch    *watch.Manager
	dns      *dns.Server
	http     *httpapi.Server
	// transport of the Consul client, whose connections Run closes.
	transport *consulhttp.Transport
	providers *provider.Manager
	// providersDir applies cfg.ProvidersDir; nil when not configured.
	providersDir *provider.Dir
}

// DefaultProvidersSocket is where the providers socket is by default.
const DefaultProvidersSocket = "/run/glimpse/providers.sock"

// New connects to Consul (waiting up to cfg.ConsulStartTimeout), settles the
// local zone and binds the DNS and HTTP addresses. Run starts serving.
func New(ctx context.Context, cfg Config, log *zap.Logger) (*Agent, error) {
	domain := mdns.CanonicalName(cfg.Domain)
	if _, ok := mdns.IsDomainName(domain); !ok || domain == "." {
		return nil, fmt.Errorf("invalid DNS domain %q", cfg.Domain)
	}
	cfg.Domain = domain
	if cfg.TTL < 0 || cfg.NegativeTTL < 0 || cfg.TTL > 24*time.Hour || cfg.NegativeTTL > 24*time.Hour {
		return nil, errors.New("DNS TTLs must be between 0 and 24h")
	}

	if cfg.Watch.MaxConns < watch.MinMaxConns {
		return nil, fmt.Errorf("-consul.max-conns must be at least %d, not %d", watch.MinMaxConns, cfg.Watch.MaxConns)
	}
	for _, p := range cfg.Watch.Pins {
		if err := watch.ValidPin(p); err != nil {
			return nil, fmt.Errorf("-watch.pin: %w", err)
		}
	}
	var tokens *provider.Tokens
	if cfg.ProvidersTokens != "" {
		t, err := provider.LoadTokens(cfg.ProvidersTokens)
		if err != nil {
			return nil, err
		}
		tokens = t
	}
	if cfg.DataDir == "" {
		return nil, errors.New("no data directory configured")
	}
	dataLock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	started := false
	defer func() {
		if !started {
			dataLock.Close()
		}
	}()
	client, transport, err := ConsulClient(ConsulOptions{Addr: cfg.ConsulAddr, Token: cfg.ConsulToken, TokenFile: cfg.ConsulTokenFile, CAFile: cfg.ConsulCAFile, MaxConns: cfg.Watch.MaxConns})
	if err != nil {
		return nil, err
	}
	zone, err := localZone(ctx, client, cfg, log)
	if err != nil {
		transport.CloseIdleConnections()
		return nil, err
	}
	cfg.Zone = zone
	cfg.Watch.Local = zone
	// The first exchange has told the protocol: over HTTP/2 each connection
	// of the budget carries many reads.
	cfg.Watch.Streams = max(1, transport.Streams())

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	dcfg := dns.Config{
		Domain:        domain,
		TTL:           uint32(cfg.TTL / time.Second),
		NegativeTTL:   uint32(cfg.NegativeTTL / time.Second),
		AllowWarning:  cfg.AllowWarning,
		MaxRecords:    cfg.MaxRecords,
		DelegateZones: cfg.DelegateZones,
	}
	c := cache.New(dns.NewBuilder(dcfg), cache.WithHistory(cfg.History))
	reg.MustRegister(cache.NewCollector(c))
	registerTransport(reg, transport)
	w := watch.New(watch.NewConsul(client), c, cfg.Watch, log.Named("watch"), watch.NewMetrics(reg))
	h := dns.NewHandler(c, dns.HandlerOptions{
		Config:    dcfg,
		LocalZone: zone,
		Metrics:   dns.NewMetrics(reg),
		Demand:    w,
		FirstWait: cfg.FirstWait,
		// What DNS reads stays watched while it is read: the watch hears
		// of it often enough for that, not at every answer.
		UseEvery: min(time.Second, cfg.Watch.Idle/10),
	})
	a := &Agent{cfg: cfg, log: log, Cache: c, Registry: reg, watch: w, transport: transport, dataLock: dataLock}
	if a.providers, err = newProviders(cfg, client, reg, log); err != nil {
		transport.CloseIdleConnections()
		return nil, err
	}
	if cfg.ProvidersDir != "" {
		a.providersDir, err = provider.NewDir(cfg.ProvidersDir, a.providers, provider.DirOptions{
			Poll: cfg.ProvidersDirPoll, Registerer: reg, Log: log.Named("providers"),
		})
		if err != nil {
			transport.CloseIdleConnections()
			return nil, err
		}
		a.providersDir.Claim()
	}
	if a.dns, err = dns.Listen(cfg.DNSAddr, cfg.UDPSockets, cfg.DNSMaxTCPConns, h); err != nil {
		transport.CloseIdleConnections()
		return nil, err
	}
	dns.RegisterServer(reg, a.dns)
	a.http, err = httpapi.Listen(cfg.HTTPAddr, httpapi.Options{Cache: c, LocalZone: zone, Gatherer: reg, Registerer: reg, Demand: w, FirstWait: cfg.FirstWait, Subscribe: cfg.Subscribe, Pprof: cfg.Pprof,
		Providers: a.providers, ProviderAllowRemote: cfg.ProviderAllowRemote, ProviderTokens: tokens,
		ProvidersSocket: cfg.ProvidersSocket, ProvidersSocketGroup: cfg.ProvidersSocketGroup,
		MaxConns: httpapi.ConnCap(cfg.Watch.MaxConns, cfg.DNSMaxTCPConns), Log: log.Named("http")})
	if err != nil {
		a.dns.Close()
		transport.CloseIdleConnections()
		return nil, err
	}
	started = true
	return a, nil
}

// ConsulOptions say how to reach the Consul agent.
type ConsulOptions struct {
	// Addr is host:port, http://, https:// or unix://path; empty: the
	// environment's ($CONSUL_HTTP_ADDR) or Consul's default.
	Addr string
	// Token is the ACL token; empty: the environment's.
	Token string
	// TokenFile holds the ACL token instead of Token.
	TokenFile string
	// CAFile verifies an https agent's certificate; empty: the
	// environment's ($CONSUL_CACERT) or the system's roots.
	CAFile string
	// MaxConns caps the connections held (0: no cap).
	MaxConns int
}

// ConsulClient returns a Consul API client for o. Its transport runs each
// request on the caller's goroutine over HTTP/1.1, or multiplexes them over
// HTTP/2 to an https agent (see consulhttp); close its idle connections when
// done with the client.
func ConsulClient(co ConsulOptions) (*api.Client, *consulhttp.Transport, error) {
	cc := api.DefaultConfig()
	if co.Addr != "" {
		cc.Address = co.Addr
	}
	if co.Token != "" {
		cc.Token = co.Token
	}
	if co.TokenFile != "" {
		if co.Token != "" {
			return nil, nil, errors.New("-consul.token and -consul.token-file are both set; keep the file")
		}
		tok, err := readSecret(co.TokenFile)
		if err != nil {
			return nil, nil, fmt.Errorf("-consul.token-file: %w", err)
		}
		cc.Token = tok
	}
	if co.CAFile != "" {
		cc.TLSConfig.CAFile = co.CAFile
	}
	o := consulhttp.Options{Network: "tcp", Address: cc.Address, MaxConns: co.MaxConns}
	if scheme, rest, ok := strings.Cut(cc.Address, "://"); ok {
		switch scheme {
		case "http", "https":
			o.Address, cc.Address = rest, rest
			if scheme == "https" {
				cc.Scheme = "https"
			}
		case "unix":
			// The socket is dialled; the URL's host is only its Host header.
			o.Network, o.Address, cc.Address = "unix", rest, "localhost"
		default:
			return nil, nil, fmt.Errorf("consul address %q: unknown scheme %q", cc.Address, scheme)
		}
	}
	if _, _, err := net.SplitHostPort(o.Address); err != nil && o.Network == "tcp" {
		port := "80"
		if cc.Scheme == "https" {
			port = "443"
		}
		o.Address = net.JoinHostPort(strings.Trim(o.Address, "[]"), port)
	}
	if cc.Scheme == "https" {
		tc, err := api.SetupTLSConfig(&cc.TLSConfig)
		if err != nil {
			return nil, nil, fmt.Errorf("consul TLS: %w", err)
		}
		o.TLS = tc
	}
	tr := consulhttp.New(o)
	// Every request goes to the configured agent: a redirect elsewhere is
	// handed back as it is, not followed.
	cc.HttpClient = &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	client, err := api.NewClient(cc)
	if err != nil {
		return nil, nil, fmt.Errorf("consul client for %s: %w", cc.Address, err)
	}
	return client, tr, nil
}

// readSecret reads a secret from a file that others may not read, trimmed
// of surrounding space.
func readSecret(file string) (string, error) {
	f, err := provider.OpenSecret(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", file)
	}
	return tok, nil
}

// localZone returns cfg.Zone, or else the Consul agent's datacenter; either
// way it waits for the Consul agent to answer.
func localZone(ctx context.Context, client *api.Client, cfg Config, log *zap.Logger) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.ConsulStartTimeout)
	defer cancel()
	var lastErr error
	for {
		// Each attempt is bounded: a Consul that accepts the connection and
		// never answers must not outlast ConsulStartTimeout.
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		var self map[string]map[string]any
		_, err := client.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(actx))
		acancel()
		// Consul may answer but refuse to show its configuration to this
		// token: with -zone the zone is known, so go on; the watchers report
		// what the token cannot read, and /readyz stays unready until they
		// can.
		// The same when Consul refuses the connection (429) because the
		// host's clients hold all it allows: the watchers back off and
		// /readyz says so.
		if err == nil || (watch.Denied(err) || watch.Throttled(err)) && cfg.Zone != "" {
			dc, _ := self["Config"]["Datacenter"].(string)
			zone := strings.ToLower(cfg.Zone)
			if zone == "" {
				zone = strings.ToLower(dc)
			}
			if !cache.ValidLabel(zone) {
				return "", fmt.Errorf("zone %q is not a DNS label", zone)
			}
			if err != nil {
				log.Warn("the consul agent did not answer glimpse's first request; using -zone", zap.String("zone", zone), zap.String("error", watch.Explain(err)))
			} else {
				log.Info("consul agent reached", zap.String("datacenter", dc), zap.String("zone", zone))
			}
			return zone, nil
		}
		if lastErr == nil {
			log.Warn("waiting for the consul agent", zap.String("error", watch.Explain(err)))
		}
		lastErr = err
		select {
		case <-ctx.Done():
			if watch.Denied(lastErr) {
				return "", fmt.Errorf("%s; the token also needs agent:read, or set -zone", watch.Explain(lastErr))
			}
			return "", fmt.Errorf("consul agent not reachable within %s: %s", cfg.ConsulStartTimeout, watch.Explain(lastErr))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// DNSAddr returns the bound DNS address.
func (a *Agent) DNSAddr() string { return a.dns.Addr() }

// HTTPAddr returns the bound HTTP address.
func (a *Agent) HTTPAddr() string { return a.http.Addr() }

// Zone returns the local zone.
func (a *Agent) Zone() string { return a.cfg.Zone }

// Run serves until ctx ends or a server fails, then shuts down gracefully:
// DNS and HTTP stop accepting and finish what is in flight (up to 10 s),
// then the watchers stop.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 2)
	defer a.dataLock.Close() // last: after the providers' work
	// Background provider retries must not outlive the agent even when the
	// manager's Run has not started.
	defer a.providers.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.watch.Run(ctx) }()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if a.providersDir != nil {
			// Apply the files before the recorded state, so that a
			// provider whose file was removed while the agent was down is
			// not registered again first.
			a.providersDir.Scan(ctx)
			wg.Add(1)
			go func() { defer wg.Done(); a.providersDir.Run(ctx) }()
		}
		a.providers.Run(ctx)
	}()
	go func() { errs <- a.dns.Serve() }()
	go func() { errs <- a.http.Serve() }()
	a.log.Info("serving", zap.String("dns", a.DNSAddr()), zap.String("http", a.HTTPAddr()), zap.String("zone", a.cfg.Zone), zap.String("domain", a.cfg.Domain))
	wg.Add(1)
	go func() { defer wg.Done(); a.notifySystemd(ctx) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
		if err != nil {
			err = fmt.Errorf("server failed: %w", err)
		}
	}
	a.log.Info("shutting down")
	_, _ = sdnotify.Notify("STOPPING=1\nSTATUS=shutting down")
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	// Provider writes under way stop first, so that the HTTP server does
	// not wait for them: their states are recorded and applied at the next
	// start.
	a.providers.Stop()
	err = errors.Join(err, a.dns.Shutdown(sctx), a.http.Shutdown(sctx))
	cancel()
	wg.Wait()
	a.transport.CloseIdleConnections()
	return err
}

// notifySystemd tells systemd (Type=notify) how the start goes: STATUS
// lines while the local zone syncs, with what holds it back, and READY=1
// once the listeners serve and the zone is ready (what /readyz says).
func (a *Agent) notifySystemd(ctx context.Context) {
	if ok, _ := sdnotify.Notify("STATUS=listening; waiting for the local zone's first sync with Consul"); !ok {
		return // not under systemd
	}
	last := ""
	for {
		changed := a.Cache.Changed()
		z := a.Cache.Zone(a.cfg.Zone)
		if z != nil && z.Ready {
			status := fmt.Sprintf("serving zone %s: %d products known, %d watched, DNS %s, HTTP %s",
				a.cfg.Zone, len(z.Known), z.Products.Len(), a.DNSAddr(), a.HTTPAddr())
			if _, err := sdnotify.Notify("READY=1\nSTATUS=" + status); err != nil {
				a.log.Warn("telling systemd the agent is ready", zap.Error(err))
			}
			return
		}
		status := "waiting for the local zone's first sync with Consul"
		if st := a.Cache.Status(a.cfg.Zone); st != nil && st.Problem() != "" {
			status += ": " + st.Problem()
		}
		if status != last {
			_, _ = sdnotify.Notify("STATUS=" + status)
			last = status
		}
		select {
		case <-changed:
		case <-time.After(time.Second): // problems change without the cache
		case <-ctx.Done():
			return
		}
	}
}

// registerTransport exports the Consul connections' metrics.
func registerTransport(reg prometheus.Registerer, t *consulhttp.Transport) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "glimpse_consul_connections",
			Help: "Connections open to the Consul agent.",
		}, func() float64 { return float64(t.Open()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "glimpse_consul_connections_peak",
			Help: "Most connections that were open to the Consul agent at once.",
		}, func() float64 { return float64(t.Peak()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "glimpse_consul_connections_limit",
			Help: "The connection budget towards the Consul agent (-consul.max-conns).",
		}, func() float64 { return float64(t.MaxConns()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "glimpse_consul_connection_streams",
			Help: "Requests one connection to the Consul agent carries at once: 1 over HTTP/1.1, 100 over HTTP/2 (an https agent); 0 while no connection is open.",
		}, func() float64 { return float64(t.Streams()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "glimpse_consul_connection_waits_total",
			Help: "Requests that waited for a connection because the budget was in use.",
		}, func() float64 { return float64(t.Waits()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "glimpse_consul_throttled_total",
			Help: "Responses that were 429 Too Many Requests: the host's Consul clients together exceed the Consul agent's limits.http_max_conns_per_client.",
		}, func() float64 { return float64(t.Throttled()) }),
	)
}

// lockDataDir takes an exclusive lock on dir (its file "lock"), held until
// the returned file is closed or the process ends: two agents sharing one
// data directory would undo each other's registrations.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	// The providers' records say who owns what: the agent's alone.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("data directory %s is in use by another glimpse-agent (pid %s); each agent needs its own", dir, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("data directory %s: lock: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// newProviders opens the providers' store under cfg.DataDir, which must be
// writable, and returns their manager.
func newProviders(cfg Config, client *api.Client, reg prometheus.Registerer, log *zap.Logger) (*provider.Manager, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("no data directory configured")
	}
	if cfg.ReconcileEvery <= 0 || cfg.ProbeEvery <= 0 || cfg.ProvidersDirPoll <= 0 {
		return nil, errors.New("the providers' reconcile, probe and directory poll intervals must be positive")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	probe, err := os.CreateTemp(cfg.DataDir, ".write-probe-*")
	if err != nil {
		return nil, fmt.Errorf("data directory %s is not writable: %w", cfg.DataDir, err)
	}
	probe.Close()
	os.Remove(probe.Name())
	store, err := provider.NewStore(filepath.Join(cfg.DataDir, "providers"))
	if err != nil {
		return nil, err
	}
	return provider.NewManager(store, provider.NewSyncer(client), provider.ManagerOptions{
		ReconcileEvery: cfg.ReconcileEvery,
		ProbeEvery:     cfg.ProbeEvery,
		Registerer:     reg,
		Log:            log.Named("providers"),
	}), nil
}
