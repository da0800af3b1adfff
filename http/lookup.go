package httpapi

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/cache"
)

// Long-poll waits, as in Consul's blocking queries.
const (
	// DefaultWait is how long a long-poll waits when the request names no
	// wait.
	DefaultWait = 5 * time.Minute
	// MaxWait caps the wait a request may ask for.
	MaxWait = 10 * time.Minute
)

// HealthFilter selects instances by health, as the health parameter of
// lookup and subscribe does.
type HealthFilter uint8

// Health filters.
const (
	// HealthPassing lets in passing instances only (the default).
	HealthPassing HealthFilter = iota
	// HealthWarning lets in passing and warning instances.
	HealthWarning
	// HealthCritical lets in critical instances only.
	HealthCritical
	// HealthAny lets in every instance.
	HealthAny
)

// ParseHealth parses the health parameter: "passing" (also ""), "warning",
// "critical" or "any", in any case.
func ParseHealth(s string) (HealthFilter, error) {
	switch cache.Lower(s) {
	case "", "passing":
		return HealthPassing, nil
	case "warning":
		return HealthWarning, nil
	case "critical":
		return HealthCritical, nil
	case "any":
		return HealthAny, nil
	}
	return 0, fmt.Errorf("health %q is not one of passing, warning, critical or any", s)
}

// Match reports whether an instance of health h passes the filter.
func (f HealthFilter) Match(h cache.Health) bool {
	switch f {
	case HealthPassing:
		return h == cache.Passing
	case HealthWarning:
		return h == cache.Passing || h == cache.Warning
	case HealthCritical:
		return h == cache.Critical
	default:
		return true
	}
}

// Instances returns the instances of addrs that pass f, address by address
// in the order given and, within an address, in the cache's order (env, job,
// service, node, address, port). It never returns nil.
func Instances(addrs []*cache.Address, f HealthFilter) []api.Instance {
	n := 0
	for _, a := range addrs {
		n += len(a.Instances)
	}
	out := make([]api.Instance, 0, n)
	for _, a := range addrs {
		for i := range a.Instances {
			in := &a.Instances[i]
			if !f.Match(in.Health) {
				continue
			}
			out = append(out, api.Instance{
				Node: in.Node, Address: in.Address.String(), Port: in.Port,
				Health: in.Health.String(), Provider: in.Provider,
				Zone: a.Zone, Product: a.Product, Env: a.Env, Job: a.Job, Service: a.Service,
			})
		}
	}
	return out
}

// lookupParams are the query parameters of a lookup.
type lookupParams struct {
	health HealthFilter
	// index is the index the client has seen; 0 means do not wait.
	index uint64
	// wait is how long to wait for the index to move, jitter included.
	wait time.Duration
}

// parseLookupParams reads health, index and wait.
func parseLookupParams(v url.Values) (lookupParams, error) {
	var p lookupParams
	var err error
	if p.health, err = ParseHealth(v.Get("health")); err != nil {
		return p, err
	}
	if s := v.Get("index"); s != "" {
		if p.index, err = strconv.ParseUint(s, 10, 64); err != nil {
			return p, fmt.Errorf("index %q is not a non-negative integer", s)
		}
	}
	if p.wait, err = parseWait(v.Get("wait")); err != nil {
		return p, err
	}
	return p, nil
}

// parseWait parses the wait parameter: a Go duration ("30s", "5m", "1m30s")
// or a plain number of seconds ("30"). Empty or zero means DefaultWait, as
// in Consul; more than MaxWait is capped at MaxWait. Like Consul, it adds a
// random jitter of up to a sixteenth of the wait, so that many clients
// waiting on the same thing spread their returns.
func parseWait(s string) (time.Duration, error) {
	var d time.Duration
	if s != "" {
		if secs, err := strconv.ParseUint(s, 10, 32); err == nil {
			d = time.Duration(secs) * time.Second
		} else if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("wait %q is not a duration such as 30s or 5m", s)
		}
	}
	switch {
	case d < 0:
		return 0, fmt.Errorf("wait %q is negative", s)
	case d == 0:
		d = DefaultWait
	case d > MaxWait:
		d = MaxWait
	}
	if j := d / 16; j > 0 {
		d += rand.N(j)
	}
	return d, nil
}

// lookup serves GET /v1/lookup/<address>, and its long-poll form.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request) {
	q, err := ParseAddress(r.PathValue("address"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	p, err := parseLookupParams(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var res cache.Result
	if p.index == 0 {
		res, err = s.lookupNow(r.Context(), q)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
	} else {
		if !s.longPolls.acquire() {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("long-poll limit (%d) reached; retry later", s.limits.MaxLongPolls))
			return
		}
		defer s.longPolls.release()
		res = s.await(r.Context(), q, p.index, p.wait)
	}
	synced := res.Zone != nil && res.Zone.Synced
	w.Header().Set("X-Glimpse-Index", strconv.FormatUint(res.Index, 10))
	w.Header().Set("X-Glimpse-Synced", strconv.FormatBool(synced))
	writeJSON(w, http.StatusOK, api.Lookup{
		Index:     res.Index,
		Address:   queryName(q),
		Instances: Instances(res.Addresses, p.health),
	})
}

// lookupNow answers a lookup at once, but for a zone or product this host
// reads for the first time, whose first result it waits for (up to
// firstWait). It fails for a product Consul lists whose state cannot be
// read: never an empty answer taken for the truth.
func (s *Server) lookupNow(ctx context.Context, q cache.Query) (cache.Result, error) {
	z, state := s.cache.Read(ctx, s.demand, q.Zone, q.Product, s.firstWait, nil)
	res := s.cache.Lookup(q)
	switch {
	case z == nil && state == cache.Pending:
		if exists, known := s.cache.Datacenter(q.Zone); known && !exists {
			return res, nil // no such zone: nothing there
		}
		return res, fmt.Errorf("zone %q is not synced with Consul yet; retry later", q.Zone)
	case state == cache.Failing:
		return res, fmt.Errorf("product %q of zone %q cannot be read from Consul: %s", q.Product, q.Zone, z.Problems[q.Product])
	case state == cache.Pending && !z.Synced:
		return res, fmt.Errorf("zone %q is not synced with Consul yet; retry later", q.Zone)
	case state == cache.Pending:
		return res, fmt.Errorf("product %q of zone %q has not been read from Consul yet; retry later", q.Product, q.Zone)
	}
	return res, nil
}

// await waits until the result of q has an index other than index, the wait
// ends, the request ends or the server shuts down, and returns the result
// then. It is woken by the hub when an address q matches changes (see
// Hub.Wake), not by every change of the cache, and it does not poll.
//
// A result index greater than index answers at once; so does one lower
// than index, which can only mean the agent restarted since the client read
// index (the cache index starts again from 1): like Consul, the client gets
// the current state and a lower index, and should take that index as its
// new starting point.
func (s *Server) await(ctx context.Context, q cache.Query, index uint64, wait time.Duration) cache.Result {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	// The product stays watched while the long-poll waits on it.
	release := s.demand.Hold(q.Zone, q.Product)
	defer release()
	s.metrics.longPolls.Inc()
	defer s.metrics.longPolls.Dec()
	changed, stop := s.cache.Hub().Wake(q)
	defer stop()
	for {
		res := s.cache.Lookup(q)
		if res.Index != index {
			return res
		}
		select {
		case <-changed:
		case <-timer.C:
			return s.cache.Lookup(q)
		case <-ctx.Done():
			return res
		case <-s.closing:
			return s.cache.Lookup(q)
		}
	}
}
