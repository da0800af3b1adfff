package httpapi

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"time"

	"glimpse/cache"
)

// zonesResponse is the body of GET /v1/zones.
type zonesResponse struct {
	// Index is the cache index.
	Index uint64       `json:"index"`
	Zones []zoneStatus `json:"zones"`
}

// zoneStatus is one zone in GET /v1/zones.
type zoneStatus struct {
	Zone string `json:"zone"`
	// Local is true for the agent's own zone.
	Local bool `json:"local"`
	// Watched is true for a zone in the cache; false for a datacenter
	// Consul knows that nobody has asked for (yet, or for a while).
	Watched bool `json:"watched"`
	// Synced is true once every watcher of the zone delivered its first
	// result.
	Synced bool `json:"synced"`
	// Index is the cache index at which the zone last changed.
	Index uint64 `json:"index"`
	// LastContact is the time of the last fresh result from Consul; null
	// when there was none.
	LastContact *time.Time `json:"last_contact"`
	// SecondsStale is 0 while every watcher of the zone is in contact with
	// Consul, else the seconds since the last fresh result.
	SecondsStale float64 `json:"seconds_stale"`
	// Error is why the zone is stale: the last failure of its watchers.
	Error string `json:"error,omitempty"`
	// Products counts the zone's glimpse products Consul lists; Watched
	// those this host reads (or pinned) that have a state.
	Products        int `json:"products"`
	WatchedProducts int `json:"watched_products"`
	Instances       int `json:"instances"`
	// Failing lists the products whose last read failed, with why; they
	// answer from their last state, or SERVFAIL without one.
	Failing []productProblem `json:"failing,omitempty"`
}

// productProblem is a product whose reads fail.
type productProblem struct {
	Product string `json:"product"`
	Error   string `json:"error"`
}

// zones serves GET /v1/zones.
func (s *Server) zones(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	resp := zonesResponse{Index: s.cache.Index(), Zones: []zoneStatus{}}
	seen := map[string]bool{}
	for _, z := range s.cache.Zones() {
		seen[z.Name] = true
		zs := zoneStatus{Zone: z.Name, Local: z.Local, Watched: true, Synced: z.Synced, Index: z.Index,
			Products: len(z.Known), WatchedProducts: z.Products.Len()}
		for _, p := range z.Products.All() {
			zs.Instances += p.Instances
		}
		for name, msg := range z.Problems {
			zs.Failing = append(zs.Failing, productProblem{Product: name, Error: msg})
		}
		sort.Slice(zs.Failing, func(i, j int) bool { return zs.Failing[i].Product < zs.Failing[j].Product })
		if st := s.cache.Status(z.Name); st != nil {
			if t := st.LastContact(); !t.IsZero() {
				t = t.UTC()
				zs.LastContact = &t
			}
			zs.SecondsStale = st.SecondsStale(now)
			zs.Error = st.Problem()
		}
		resp.Zones = append(resp.Zones, zs)
	}
	for _, dc := range s.cache.Datacenters() {
		if !seen[dc] && cache.ValidLabel(dc) {
			seen[dc] = true
			resp.Zones = append(resp.Zones, zoneStatus{Zone: dc})
		}
	}
	sort.Slice(resp.Zones, func(i, j int) bool { return resp.Zones[i].Zone < resp.Zones[j].Zone })
	w.Header().Set("X-Glimpse-Index", strconv.FormatUint(resp.Index, 10))
	writeJSON(w, http.StatusOK, resp)
}

// topologyResponse is the body of GET /v1/topology.
type topologyResponse struct {
	Zone string `json:"zone"`
	// Index is the cache index at which the zone last changed (the cache
	// index for a zone not in the cache yet).
	Index uint64 `json:"index"`
	// Synced is false while the zone's first sync is pending: the
	// hierarchy may be incomplete.
	Synced bool `json:"synced"`
	// Products holds every glimpse product Consul lists; only those this
	// host reads (watched) have their hierarchy.
	Products map[string]productTopology `json:"products"`
}

type productTopology struct {
	// Watched is true for a product this host reads or pins, whose
	// hierarchy follows; false for one it has not read.
	Watched bool                   `json:"watched"`
	Envs    map[string]envTopology `json:"envs"`
	// Error is why the product's reads fail, if they do.
	Error string `json:"error,omitempty"`
}

type envTopology struct {
	Jobs map[string]jobTopology `json:"jobs"`
}

type jobTopology struct {
	Services map[string]*healthCounts `json:"services"`
}

// healthCounts counts the instances of an address by health.
type healthCounts struct {
	Passing  int `json:"passing"`
	Warning  int `json:"warning"`
	Critical int `json:"critical"`
}

// topology serves GET /v1/topology?zone=Z.
func (s *Server) topology(w http.ResponseWriter, r *http.Request) {
	zone := r.URL.Query().Get("zone")
	if zone == "" {
		zone = s.local
	}
	if !cache.ValidLabel(zone) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("zone %q is not a DNS label (letters, digits and '-', 1 to 63 characters)", zone))
		return
	}
	zone = cache.Lower(zone)
	resp := topologyResponse{Zone: zone, Products: map[string]productTopology{}}
	z := s.cache.Zone(zone)
	if z == nil {
		exists, known := s.cache.Datacenter(zone)
		if !exists {
			msg := fmt.Sprintf("zone %q is unknown: Consul knows no such datacenter", zone)
			if !known {
				msg = fmt.Sprintf("zone %q is not watched and the list of Consul's datacenters is not loaded yet", zone)
			}
			writeError(w, http.StatusNotFound, msg)
			return
		}
		// Consul knows it: watch it from now on, and answer what there is.
		s.demand.Use(zone, "")
		resp.Index = s.cache.Index()
		if z = s.cache.Zone(zone); z == nil {
			w.Header().Set("X-Glimpse-Index", strconv.FormatUint(resp.Index, 10))
			writeJSON(w, http.StatusOK, resp)
			return
		}
	}
	s.demand.Use(zone, "")
	resp.Index, resp.Synced = z.Index, z.Synced
	for name := range z.Known {
		resp.Products[name] = productTopology{Envs: map[string]envTopology{}, Error: z.Problems[name]}
	}
	for _, p := range z.Products.All() {
		pt := productTopology{Watched: true, Envs: map[string]envTopology{}, Error: z.Problems[p.Name]}
		for _, a := range p.Addresses {
			et, ok := pt.Envs[a.Env]
			if !ok {
				et = envTopology{Jobs: map[string]jobTopology{}}
				pt.Envs[a.Env] = et
			}
			jt, ok := et.Jobs[a.Job]
			if !ok {
				jt = jobTopology{Services: map[string]*healthCounts{}}
				et.Jobs[a.Job] = jt
			}
			c := &healthCounts{}
			for i := range a.Instances {
				switch a.Instances[i].Health {
				case cache.Passing:
					c.Passing++
				case cache.Warning:
					c.Warning++
				default:
					c.Critical++
				}
			}
			jt.Services[a.Service] = c
		}
		resp.Products[p.Name] = pt
	}
	w.Header().Set("X-Glimpse-Index", strconv.FormatUint(resp.Index, 10))
	writeJSON(w, http.StatusOK, resp)
}
