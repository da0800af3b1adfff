package watch

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/rugby110/glimpse/cache"
)

// Consul is the Backend of glimpse-agent: blocking queries against the local
// Consul agent's HTTP API, as stale reads (any server answers).
//
//   - Products: /v1/catalog/services, the service names whose instances
//     carry a glimpse tag;
//   - Product: /v1/health/service/<product>, every instance with its checks,
//     decoded into the few fields glimpse reads;
//   - Servers: /v1/catalog/service/consul;
//   - Checks: /v1/health/state/critical and /warning, filtered to the
//     products asked for;
//   - Datacenters: /v1/catalog/datacenters (it does not block).
type Consul struct {
	client *api.Client
}

// NewConsul returns the Backend reading from client's Consul agent.
func NewConsul(client *api.Client) *Consul { return &Consul{client: client} }

var _ Backend = (*Consul)(nil)

func queryOptions(ctx context.Context, zone string, q Query) *api.QueryOptions {
	return (&api.QueryOptions{
		Datacenter: zone,
		AllowStale: true,
		WaitIndex:  q.Index,
		WaitTime:   q.Wait,
	}).WithContext(ctx)
}

func metaOf(m *api.QueryMeta) Meta {
	// Consul's streaming backend, which serves blocking health queries,
	// never reports a leader; its results are fresh.
	return Meta{
		Index:    m.LastIndex,
		Fresh:    m.KnownLeader || m.QueryBackend == api.QueryBackendStreaming,
		Filtered: m.ResultsFilteredByACLs,
	}
}

// Datacenters implements Backend.
func (c *Consul) Datacenters(ctx context.Context) ([]string, error) {
	var dcs []string
	_, err := c.client.Raw().Query("/v1/catalog/datacenters", &dcs, (&api.QueryOptions{}).WithContext(ctx))
	return dcs, err
}

// Products implements Backend.
func (c *Consul) Products(ctx context.Context, zone string, q Query) ([]string, Meta, error) {
	services, meta, err := c.client.Catalog().Services(queryOptions(ctx, zone, q))
	if err != nil {
		return nil, Meta{}, err
	}
	// A datacenter's catalog always holds the "consul" service of its
	// servers; Consul 1.14 filters a list by ACLs without saying so, so an
	// empty list means the token may read nothing.
	if len(services) == 0 {
		return nil, Meta{}, ErrHidden
	}
	names := make([]string, 0, len(services))
	for name, tags := range services {
		if IsProduct(name, tags) {
			names = append(names, cache.Lower(name))
		}
	}
	return names, metaOf(meta), nil
}

// Product implements Backend.
func (c *Consul) Product(ctx context.Context, zone, product string, q Query) ([]cache.Instance, int, Meta, error) {
	var entries []*healthEntry
	meta, err := c.client.Raw().Query("/v1/health/service/"+url.PathEscape(product), &entries, queryOptions(ctx, zone, q))
	if err != nil {
		return nil, 0, Meta{}, err
	}
	if meta.ResultsFilteredByACLs && len(entries) == 0 {
		return nil, 0, Meta{}, ErrHidden
	}
	in, ignored := instances(entries)
	return in, ignored, metaOf(meta), nil
}

// Servers implements Backend.
func (c *Consul) Servers(ctx context.Context, zone string, q Query) ([]cache.Server, Meta, error) {
	entries, meta, err := c.client.Catalog().Service("consul", "", queryOptions(ctx, zone, q))
	if err != nil {
		return nil, Meta{}, err
	}
	return servers(entries), metaOf(meta), nil
}

// checkEntry is the part of a health check Checks reads.
type checkEntry struct {
	ServiceName string
	ModifyIndex uint64
}

// Checks implements Backend. Consul's state endpoints read the checks of one
// state through its index, and their blocking reads wake only when a check
// enters or leaves that state, or changes in it: a health change anywhere
// in the zone costs Consul a read of the zone's unhealthy checks, not of
// all of them.
func (c *Consul) Checks(ctx context.Context, zone string, health cache.Health, products []string, q Query) (map[string]CheckVersion, Meta, error) {
	state := api.HealthCritical
	if health == cache.Warning {
		state = api.HealthWarning
	}
	var entries []checkEntry
	opts := queryOptions(ctx, zone, q)
	if products != nil {
		opts.Filter = checksFilter(products)
	}
	meta, err := c.client.Raw().Query("/v1/health/state/"+state, &entries, opts)
	if err != nil {
		return nil, Meta{}, err
	}
	out := make(map[string]CheckVersion)
	for _, e := range entries {
		if e.ServiceName == "" {
			continue // a node's check
		}
		name := cache.Lower(e.ServiceName)
		v := out[name]
		v.Index = max(v.Index, e.ModifyIndex)
		v.Count++
		out[name] = v
	}
	return out, metaOf(meta), nil
}

// checksFilter is the filter expression that keeps the checks of products:
// one regular expression, which Consul compiles once per read, rather than
// a comparison per product and check.
func checksFilter(products []string) string {
	var b strings.Builder
	b.WriteString("ServiceName matches `(?i)^(")
	for i, p := range products {
		if i > 0 {
			b.WriteByte('|')
		}
		// Product names are DNS labels, so QuoteMeta leaves them as they
		// are and none holds the backquote that ends the raw string.
		b.WriteString(regexp.QuoteMeta(strings.ReplaceAll(p, "`", "")))
	}
	b.WriteString(")$`")
	return b.String()
}

// tokenAdvice says what a token glimpse-agent can work with needs.
const tokenAdvice = "it needs service:read on the glimpse services and on consul, and node:read (set -consul.token or CONSUL_HTTP_TOKEN)"

// ErrHidden is the error of a read whose every result Consul's ACLs hid
// from glimpse's token: a service list without even Consul's own service,
// or a list Consul says it filtered down to nothing. glimpse cannot tell an
// empty catalog from one it may not see, so it serves neither.
var ErrHidden = errors.New("consul's ACLs hide every result from glimpse's token; " + tokenAdvice)

// blockedMessage is what Consul answers, with a 403, for an endpoint its
// http_config.block_endpoints blocks.
const blockedMessage = "blocked by agent configuration"

// Denied reports whether err is Consul refusing glimpse's token: a 403 that
// is not a blocked endpoint, or every result hidden by ACLs.
func Denied(err error) bool {
	var se api.StatusError
	return errors.Is(err, ErrHidden) ||
		errors.As(err, &se) && se.Code == http.StatusForbidden && !strings.Contains(se.Body, blockedMessage)
}

// Throttled reports whether err is Consul's 429: too many connections (or
// requests) from this host.
func Throttled(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusTooManyRequests
}

// Explain returns err's message, with what to do about it where Consul's
// answer is a known one.
func Explain(err error) string {
	var se api.StatusError
	if !errors.As(err, &se) {
		return err.Error()
	}
	body := strings.TrimSpace(se.Body)
	switch {
	case se.Code == http.StatusForbidden && strings.Contains(body, blockedMessage):
		return "the consul agent blocks this endpoint (" + body + "; see its http_config.block_endpoints)"
	case se.Code == http.StatusForbidden:
		return "consul refused glimpse's token (" + body + "); " + tokenAdvice
	case se.Code == http.StatusTooManyRequests:
		return "the consul agent refused a connection with 429 Too Many Requests: this host's clients together hold more connections than its limits.http_max_conns_per_client (default 200) allows; lower -consul.max-conns or the other clients' connections, or raise that limit"
	}
	return err.Error()
}

// cause is a short name for the kind of err, for metrics: ok, denied,
// blocked, throttled or error.
func cause(err error) string {
	var se api.StatusError
	switch {
	case err == nil:
		return "ok"
	case Denied(err):
		return "denied"
	case Throttled(err):
		return "throttled"
	case errors.As(err, &se) && se.Code == http.StatusForbidden:
		return "blocked"
	}
	return "error"
}
