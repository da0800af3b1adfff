package httpapi

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/cache"
)

// zones serves GET /v1/zones.
func (s *Server) zones(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	resp := api.Zones{Index: s.cache.Index(), Zones: []api.ZoneStatus{}}
	seen := map[string]bool{}
	for _, z := range s.cache.Zones() {
		seen[z.Name] = true
		zs := api.ZoneStatus{Zone: z.Name, Local: z.Local, Watched: true, Synced: z.Synced, Index: z.Index,
			Products: len(z.Known), WatchedProducts: z.Products.Len()}
		for _, p := range z.Products.All() {
			zs.Instances += p.Instances
		}
		for name, msg := range z.Problems {
			zs.Failing = append(zs.Failing, api.ProductProblem{Product: name, Error: msg})
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
			resp.Zones = append(resp.Zones, api.ZoneStatus{Zone: dc})
		}
	}
	sort.Slice(resp.Zones, func(i, j int) bool { return resp.Zones[i].Zone < resp.Zones[j].Zone })
	w.Header().Set("X-Glimpse-Index", strconv.FormatUint(resp.Index, 10))
	writeJSON(w, http.StatusOK, resp)
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
	resp := api.Topology{Zone: zone, Products: map[string]api.ProductTopology{}}
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
		resp.Products[name] = api.ProductTopology{Envs: map[string]api.EnvTopology{}, Error: z.Problems[name]}
	}
	for _, p := range z.Products.All() {
		pt := api.ProductTopology{Watched: true, Envs: map[string]api.EnvTopology{}, Error: z.Problems[p.Name]}
		for _, a := range p.Addresses {
			et, ok := pt.Envs[a.Env]
			if !ok {
				et = api.EnvTopology{Jobs: map[string]api.JobTopology{}}
				pt.Envs[a.Env] = et
			}
			jt, ok := et.Jobs[a.Job]
			if !ok {
				jt = api.JobTopology{Services: map[string]*api.HealthCounts{}}
				et.Jobs[a.Job] = jt
			}
			c := &api.HealthCounts{}
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
