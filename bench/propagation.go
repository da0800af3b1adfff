package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"

	gapi "github.com/rugby110/glimpse/api"
)

// wsMsg is a websocket subscription message (api.Message) with its
// instances left undecoded: the harness reads the messages of 10,000
// subscribers at once and only counts them.
type wsMsg struct {
	Type      string            `json:"type"`
	Index     uint64            `json:"index"`
	Address   string            `json:"address"`
	Instances []json.RawMessage `json:"instances"`
}

// propagationAddresses is how many job addresses the changes rotate over.
const propagationAddresses = 10

// propagationSection makes changes in Consul (check flips, registrations,
// deregistrations) one at a time and times how long each takes to show in
// a DNS answer, to a websocket subscriber and to a long-poll.
func (b *bench) propagationSection(ctx context.Context) error {
	n := min(propagationAddresses, b.topo.products)
	addrs := make([]string, n)
	q := url.Values{}
	for i := range addrs {
		addrs[i] = glimpseAddress(i, 0)
		q.Add("address", addrs[i])
	}
	ws, _, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+b.g.httpAddr+"/v1/subscribe?"+q.Encode(), nil)
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	defer ws.Close()
	type wsEvent struct {
		msg wsMsg
		at  time.Time
	}
	events := make(chan wsEvent, 1024)
	go func() {
		defer close(events)
		for {
			var m wsMsg
			if err := ws.ReadJSON(&m); err != nil {
				return
			}
			events <- wsEvent{m, time.Now()}
		}
	}()
	// The snapshots first.
	for seen := 0; seen < n; {
		select {
		case e, ok := <-events:
			if !ok {
				return fmt.Errorf("websocket closed before the snapshots")
			}
			if e.msg.Type == "snapshot" {
				seen++
			}
		case <-time.After(10 * time.Second):
			return fmt.Errorf("websocket: %d of %d snapshots", seen, n)
		}
	}

	var dnsLat, wsLat, lpLat, consulLat, writeLat []float64
	b.proxy.ResetCounts()
	timeouts := map[string]int{}
	const timeout = 10 * time.Second
	for c := 0; c < b.cfg.changes; c++ {
		p := c % n
		phase := (c / n) % 4
		ops, want, what := b.change(p, phase)
		addr := addrs[p]
		dnsName := glimpseName(p, 0)

		// The long-poll waits from the current index.
		var cur gapi.Lookup
		if err := getJSON(ctx, "http://"+b.g.httpAddr+"/v1/lookup/"+addr, &cur); err != nil {
			return err
		}
		var wg sync.WaitGroup
		var lpAt, consulAt time.Time
		lpCtx, lpCancel := context.WithTimeout(ctx, timeout)
		// Consul's own blocking query on the product, straight to Consul:
		// when any client of Consul could know.
		_, meta, err := b.capi.Health().Service(productName(p), jobName(0), true, nil)
		if err != nil {
			lpCancel()
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			idx := meta.LastIndex
			for lpCtx.Err() == nil {
				q := (&api.QueryOptions{WaitIndex: idx, WaitTime: 30 * time.Second, AllowStale: true}).WithContext(lpCtx)
				es, m, err := b.capi.Health().Service(productName(p), jobName(0), true, q)
				if err != nil {
					return
				}
				if len(es) == want {
					consulAt = time.Now()
					return
				}
				idx = m.LastIndex
			}
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			index := cur.Index
			for lpCtx.Err() == nil {
				var r gapi.Lookup
				if getJSON(lpCtx, fmt.Sprintf("http://%s/v1/lookup/%s?index=%d&wait=30s", b.g.httpAddr, addr, index), &r) != nil {
					return
				}
				if len(r.Instances) == want {
					lpAt = time.Now()
					return
				}
				index = r.Index
			}
		}()
		time.Sleep(10 * time.Millisecond) // the long-poll is waiting

		t0 := time.Now()
		if err := txn(ctx, b.capi, ops); err != nil {
			lpCancel()
			wg.Wait()
			return fmt.Errorf("change %d (%s): %w", c, what, err)
		}
		writeLat = append(writeLat, msSince(t0))

		// DNS: poll until the answer has the new instance count.
		wg.Add(1)
		var dnsAt time.Time
		go func() {
			defer wg.Done()
			for time.Since(t0) < timeout {
				if r, err := exchange(b.g.dnsAddr, dnsName, mdns.TypeSRV); err == nil && countSRV(r) == want {
					dnsAt = time.Now()
					return
				}
				time.Sleep(200 * time.Microsecond)
			}
		}()
		// Websocket: the update for addr with the new count.
		var wsAt time.Time
	wait:
		for {
			select {
			case e, ok := <-events:
				if !ok {
					break wait
				}
				if e.msg.Address == addr && e.msg.Type == "update" && len(e.msg.Instances) == want && e.at.After(t0) {
					wsAt = e.at
					break wait
				}
			case <-time.After(time.Until(t0.Add(timeout))):
				break wait
			}
		}
		wg.Wait()
		lpCancel()
		for _, o := range []struct {
			name string
			at   time.Time
			lat  *[]float64
		}{{"DNS answer", dnsAt, &dnsLat}, {"websocket", wsAt, &wsLat}, {"long-poll", lpAt, &lpLat}, {"Consul blocking query", consulAt, &consulLat}} {
			if o.at.IsZero() {
				timeouts[o.name]++
				continue
			}
			*o.lat = append(*o.lat, float64(o.at.Sub(t0).Microseconds())/1000)
		}
		time.Sleep(20 * time.Millisecond)
	}
	logf("propagation: %d changes; DNS p50 %.1f ms p99 %.1f ms; websocket p50 %.1f p99 %.1f; long-poll p50 %.1f p99 %.1f; timeouts %v",
		b.cfg.changes, pct(dnsLat, 50), pct(dnsLat, 99), pct(wsLat, 50), pct(wsLat, 99), pct(lpLat, 50), pct(lpLat, 99), timeouts)
	b.rep.propagation(b.cfg.changes, map[string][]float64{"DNS answer": dnsLat, "websocket": wsLat, "long-poll": lpLat, "Consul blocking query": consulLat}, writeLat, timeouts, b.proxy.Count())
	return nil
}

// change returns the transaction of change phase on job 0 of product p,
// the instance count the address then has, and what it is.
func (b *bench) change(p, phase int) (api.TxnOps, int, string) {
	n := b.topo.perJob
	switch phase {
	case 0:
		return b.topo.checkOps(p, 0, 0, api.HealthCritical), n - 1, "check to critical"
	case 1:
		return b.topo.checkOps(p, 0, 0, api.HealthPassing), n, "check to passing"
	case 2:
		return b.topo.serviceOps(p, 0, n, api.HealthPassing), n + 1, "registration"
	default:
		node := nodeName(b.topo.node(p, 0, n))
		return api.TxnOps{{Service: &api.ServiceTxnOp{Verb: api.ServiceDelete, Node: node, Service: api.AgentService{ID: serviceID(p, 0, n), Service: productName(p)}}}}, n, "deregistration"
	}
}

func countSRV(m *mdns.Msg) int {
	if m.Rcode != mdns.RcodeSuccess {
		return 0
	}
	n := 0
	for _, rr := range m.Answer {
		if _, ok := rr.(*mdns.SRV); ok {
			n++
		}
	}
	return n
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }

// pct is the p-th percentile of unsorted values.
func pct(vs []float64, p float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	return percentile(s, p)
}

// propagation reports section 3.
func (r *report) propagation(changes int, lat map[string][]float64, writeLat []float64, timeouts map[string]int, consulRequests int64) {
	var b strings.Builder
	fmt.Fprintf(&b, "## 3. Propagation\n\n")
	fmt.Fprintf(&b, "%d changes made in Consul one at a time, rotating over %d job addresses: a check to critical, back to passing, a new instance, its deregistration. "+
		"Each is timed from the start of the Consul write (a transaction on the catalog) until (a) a DNS SRV answer polled every 0.2 ms shows it, "+
		"(b) the websocket subscriber of those addresses receives it, (c) a long-poll waiting on the address returns it. "+
		"The Consul write itself took p50 %.1f ms, p99 %.1f ms of that. For reference, (d) a blocking query straight to Consul on the product "+
		"(stale, as glimpse's watchers ask) shows when any client of Consul could know. glimpse's watchers made %d requests to Consul over the %d changes.\n\n",
		changes, propagationAddresses, pct(writeLat, 50), pct(writeLat, 99), consulRequests, changes)
	b.WriteString("| path | changes seen | p50 | p99 | max |\n|---|---|---|---|---|\n")
	var series []Series
	for _, name := range []string{"DNS answer", "websocket", "long-poll", "Consul blocking query"} {
		v := lat[name]
		fmt.Fprintf(&b, "| %s | %d | %.1f ms | %.1f ms | %.1f ms |\n", name, len(v), pct(v, 50), pct(v, 99), pct(v, 100))
		series = append(series, Series{Name: name, Values: v})
	}
	b.WriteString("\n![Propagation latency](propagation.svg)\n")
	r.charts["propagation.svg"] = cdfChartSVG("Consul change → seen by the client (CDF)", series, 50)
	r.add("%s", b.String())
	for _, name := range []string{"DNS answer", "websocket", "long-poll"} {
		v := lat[name]
		p99 := pct(v, 99)
		missing := timeouts[name]
		got := fmt.Sprintf("%.1f ms", p99)
		if missing > 0 {
			got += fmt.Sprintf(" (%d changes never seen within 10 s)", missing)
		}
		r.check("propagation p99, "+name, "≤ 50 ms", got, p99 <= 50 && missing == 0 && len(v) > 0)
	}
}
