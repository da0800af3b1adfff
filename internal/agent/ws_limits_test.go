package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/consul/api"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/rugby110/glimpse/cache"
	httpapi "github.com/rugby110/glimpse/http"
	"github.com/rugby110/glimpse/internal/testconsul"
)

// reRegister registers in again with another port: one change of its
// address in Consul. register's cleanup (deregistration) still applies.
func reRegister(t testing.TB, c *api.Client, in instance, port int) {
	t.Helper()
	reg := &api.AgentServiceRegistration{
		ID: in.id, Name: in.product, Address: in.address, Port: port,
		Tags: append([]string{"glimpse:env=" + in.env, "glimpse:job=" + in.job, "glimpse:service=" + in.service}, in.extraTags...),
	}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("re-register %s with port %d: %v", in.id, port, err)
	}
}

// portOf returns the port of the instance at ip in m, or 0.
func portOf(m wsMessage, ip string) int {
	for _, in := range m.Instances {
		if in.Address == ip {
			return int(in.Port)
		}
	}
	return 0
}

// dialWS opens a subscription; unlike dialSubscribe it returns the
// handshake's failure and response.
func dialWS(t testing.TB, d *websocket.Dialer, httpAddr string, params url.Values, header http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	u := url.URL{Scheme: "ws", Host: httpAddr, Path: "/v1/subscribe", RawQuery: params.Encode()}
	conn, resp, err := d.Dial(u.String(), header)
	if conn != nil {
		t.Cleanup(func() { conn.Close() })
	}
	return conn, resp, err
}

// wantHandshakeError checks that a subscription is refused with code and,
// when jsonBody, a JSON error whose message contains want.
func wantHandshakeError(t testing.TB, what string, conn *websocket.Conn, resp *http.Response, err error, code int, jsonBody bool, want string) {
	t.Helper()
	if err == nil {
		conn.Close()
		t.Fatalf("%s: handshake succeeded, want HTTP %d", what, code)
	}
	if resp == nil {
		t.Fatalf("%s: %v without a response, want HTTP %d", what, err, code)
	}
	if resp.StatusCode != code {
		t.Fatalf("%s: HTTP %d, want %d", what, resp.StatusCode, code)
	}
	if !jsonBody {
		return
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var body struct {
		Error string `json:"error"`
	}
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &body); err != nil || body.Error == "" {
		t.Fatalf("%s: body %q is not a JSON error (%v)", what, b, err)
	}
	if !strings.Contains(body.Error, want) {
		t.Errorf("%s: error %q does not mention %q", what, body.Error, want)
	}
}

// heapInUse returns the heap in use after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// observation is one message a reader got: the flipping instance's port
// and when.
type observation struct {
	port  int
	index uint64
	at    time.Time
}

// TestSubscribeSlowReader: while 1,000 changes of one address go through
// Consul, a subscriber that does not read neither delays the subscribers
// that read (they see every change promptly, in order, and the final state
// within a bound after the last change) nor costs memory that grows with
// the changes: its pending states merge per address (the hub never holds
// more than one per address for a subscriber), the merges show in
// glimpse_http_subscription_updates_merged_total, and the heap does not
// grow between change 100 and change 1,000. When it reads again it drains
// to the final state.
func TestSubscribeSlowReader(t *testing.T) {
	const (
		changes  = 1000
		statics  = 10 // instances that do not change, to make messages bigger
		basePort = 20000
		fastN    = 3
		flipIP   = "127.0.8.200"
		// finalBound is how soon after the last change a reading
		// subscriber must see the final state; lagBound bounds every
		// change's delay to a reading subscriber.
		finalBound = 5 * time.Second
		lagBound   = 5 * time.Second
		heapBound  = 16 << 20
	)
	c := consul.Client()
	p := newProduct("slow")
	for i := range statics {
		register(t, c, instance{id: fmt.Sprintf("%s-s%d", p, i), product: p, env: "prod", job: "web", service: "http", address: fmt.Sprintf("127.0.8.%d", i+1), port: 80})
	}
	// The instance that changes is registered in the catalog on a node of
	// its own: each write is one Consul index (registrations through the
	// local agent reach the catalog through its anti-entropy sync, which
	// coalesces them).
	flipNode := p + "-flip"
	flipTo := func(port int) {
		t.Helper()
		_, err := c.Catalog().Register(&api.CatalogRegistration{
			Node: flipNode, Address: flipIP, SkipNodeUpdate: port != basePort,
			Service: &api.AgentService{
				ID: flipNode, Service: p, Port: port,
				Tags: []string{"glimpse:env=prod", "glimpse:job=web", "glimpse:service=http"},
			},
		}, nil)
		if err != nil {
			t.Fatalf("catalog register %s with port %d: %v", flipNode, port, err)
		}
	}
	flipTo(basePort)
	t.Cleanup(func() { _, _ = c.Catalog().Deregister(&api.CatalogDeregistration{Node: flipNode}, nil) })

	cfg := testConfig(t, consul.HTTPAddr())
	// A short history, so that what the heap holds for resumes is bounded
	// well below the bound checked (the default keeps 16384 changes).
	cfg.History = 64
	// The slow subscriber is not disconnected while it does not read.
	cfg.Subscribe.WriteTimeout = 2 * time.Minute
	// The watcher takes every change Consul has, not 20 a second.
	cfg.Watch.Rate, cfg.Watch.Burst = rate.Inf, 1
	a := startAgent(t, cfg)
	hub := a.Cache.Hub()
	addr := "http.web.prod." + p + ".dc1"
	params := url.Values{"address": {addr}}
	initial := func(m wsMessage) bool { return len(m.Instances) == statics+1 && portOf(m, flipIP) == basePort }

	// The readers.
	fast := make([]*websocket.Conn, fastN)
	fastLast := make([]map[string]uint64, fastN)
	for i := range fast {
		fast[i] = dialSubscribe(t, a.HTTPAddr(), params)
		fastLast[i] = map[string]uint64{}
		readUntil(t, fast[i], fastLast[i], initial)
	}
	// The slow one: a small read buffer, a small TCP receive buffer and a
	// small MSS, set before connecting, so that the kernel holds few of its
	// messages: the agent's send buffer, sized by Linux from the peer's MSS,
	// stays near 30 KB instead of growing to megabytes on loopback (with
	// SO_RCVBUF alone the agent could still queue about 1.6 MB), and the
	// agent's writes to it block after a few messages.
	slowDialer := &websocket.Dialer{
		ReadBufferSize: 1024,
		NetDialContext: (&net.Dialer{Control: func(network, address string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = errors.Join(
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 1024),
					unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, 536))
			})
			return errors.Join(err, serr)
		}}).DialContext,
	}
	slow, resp, err := dialWS(t, slowDialer, a.HTTPAddr(), params, nil)
	if err != nil {
		t.Fatalf("slow subscriber: %v (%v)", err, resp)
	}
	slowLast := map[string]uint64{}
	readUntil(t, slow, slowLast, initial)
	// An in-process subscriber of the same hub that never takes: the hub's
	// own view of a subscriber that does not read.
	q, err := httpapi.ParseAddress(addr)
	if err != nil {
		t.Fatal(err)
	}
	idle, _ := hub.Subscribe([]cache.Query{q}, 0)
	defer idle.Close()
	idle.Take()
	mergedBefore := hub.Merged()
	subscribers := hub.Subscribers()

	// The fast readers read everything in the background.
	final := basePort + changes
	type fastResult struct {
		obs []observation
		err error
	}
	results := make([]chan fastResult, fastN)
	for i, conn := range fast {
		results[i] = make(chan fastResult, 1)
		go func() {
			var r fastResult
			defer func() { results[i] <- r }()
			last, lastPort := fastLast[i][addr], basePort
			for {
				_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
				var m wsMessage
				if r.err = conn.ReadJSON(&m); r.err != nil {
					return
				}
				now := time.Now()
				port := portOf(m, flipIP)
				switch {
				case m.Address != addr || m.Type != "update":
					r.err = fmt.Errorf("message %s %s, want an update of %s", m.Type, m.Address, addr)
				case m.Index <= last:
					r.err = fmt.Errorf("index %d after %d", m.Index, last)
				case len(m.Instances) != statics+1 || port < lastPort:
					r.err = fmt.Errorf("index %d: %d instances, port %d after %d", m.Index, len(m.Instances), port, lastPort)
				}
				if r.err != nil {
					return
				}
				last, lastPort = m.Index, port
				r.obs = append(r.obs, observation{port: port, index: m.Index, at: now})
				if port == final {
					return
				}
			}
		}()
	}

	// 1,000 changes through Consul, as fast as it takes them.
	writeAt := make([]time.Time, changes+1)
	maxPending := 0
	var heap100 uint64
	start := time.Now()
	for i := 1; i <= changes; i++ {
		flipTo(basePort + i)
		writeAt[i] = time.Now()
		maxPending = max(maxPending, idle.Pending())
		if i == 100 {
			heap100 = heapInUse()
		}
	}
	writing := time.Since(start)
	t.Logf("%d changes written to Consul in %v (%.0f/s)", changes, writing.Round(time.Millisecond), float64(changes)/writing.Seconds())

	// The readers see the final state promptly, and every change soon.
	var states []int
	for i, ch := range results {
		var r fastResult
		select {
		case r = <-ch:
		case <-time.After(finalBound + 10*time.Second):
			t.Fatalf("fast reader %d: no final state %v after the last change", i, finalBound+10*time.Second)
		}
		if r.err != nil {
			t.Fatalf("fast reader %d after %d messages: %v", i, len(r.obs), r.err)
		}
		end := r.obs[len(r.obs)-1]
		if d := end.at.Sub(writeAt[changes]); d > finalBound {
			t.Errorf("fast reader %d: final state %v after the last change, want within %v", i, d, finalBound)
		}
		// lag[k]: from the write of change k to the first message showing it
		// (or a later one).
		lags := make([]time.Duration, 0, changes)
		j := 0
		for k := 1; k <= changes; k++ {
			for r.obs[j].port < basePort+k {
				j++
			}
			lags = append(lags, max(r.obs[j].at.Sub(writeAt[k]), 0))
		}
		slices.Sort(lags)
		t.Logf("fast reader %d: %d states, final %v after the last write; lag p50 %v p99 %v max %v",
			i, len(r.obs), end.at.Sub(writeAt[changes]).Round(time.Microsecond),
			lags[len(lags)/2].Round(time.Microsecond), lags[len(lags)*99/100].Round(time.Microsecond), lags[len(lags)-1].Round(time.Microsecond))
		if lags[len(lags)-1] > lagBound {
			t.Errorf("fast reader %d: a change took %v to arrive, want at most %v", i, lags[len(lags)-1], lagBound)
		}
		states = append(states, len(r.obs))
	}
	heap1000 := heapInUse()
	t.Logf("heap in use after GC: %.1f MiB at change 100, %.1f MiB at change %d (%+.1f MiB)",
		float64(heap100)/(1<<20), float64(heap1000)/(1<<20), changes, (float64(heap1000)-float64(heap100))/(1<<20))
	if heap1000 > heap100 && heap1000-heap100 > heapBound {
		t.Errorf("heap grew by %d MiB between change 100 and %d, want at most %d MiB", (heap1000-heap100)>>20, changes, heapBound>>20)
	}
	if maxPending > 1 {
		t.Errorf("a subscriber that never reads had %d pending states for 1 address", maxPending)
	}
	// The slow subscriber is still connected.
	if n := hub.Subscribers(); n != subscribers {
		t.Fatalf("%d subscribers after the changes, want %d: the slow one was dropped?", n, subscribers)
	}

	// The slow subscriber reads again: what it had in the kernel's buffers,
	// then merged states, ending with the final one.
	var slowMsgs int
	var lastMsg wsMessage
	lastPort := basePort
	for lastMsg.Index == 0 || portOf(lastMsg, flipIP) != final {
		lastMsg = readUntil(t, slow, slowLast, func(wsMessage) bool { return true })
		slowMsgs++
		port := portOf(lastMsg, flipIP)
		if lastMsg.Type != "update" || len(lastMsg.Instances) != statics+1 || port < lastPort {
			t.Fatalf("slow subscriber message %d: %s with %d instances, port %d after %d", slowMsgs, lastMsg.Type, len(lastMsg.Instances), port, lastPort)
		}
		lastPort = port
	}
	if got := idle.Take(); len(got) != 1 || got[0].Address.Index != lastMsg.Index {
		idx := []uint64{}
		for _, u := range got {
			idx = append(idx, u.Address.Index)
		}
		t.Errorf("the idle hub subscriber's pending states at %v, want only the final one at %d", idx, lastMsg.Index)
	}

	merged := hub.Merged() - mergedBefore
	published := slices.Max(states) // states of the address the hub published, at least
	metric := metricValue(scrape(t, a.HTTPAddr()), "glimpse_http_subscription_updates_merged_total")
	t.Logf("slow subscriber: %d messages for at least %d states; merged: %d (metric %v)", slowMsgs, published, merged, metric)
	// Every state offered to the slow subscriber was written or merged, so
	// it saw at least published-slowMsgs merges, and the idle one at least
	// published-1.
	if slowMsgs > published*3/4 {
		t.Errorf("the slow subscriber got %d messages for %d states: its writes never blocked, the test did not make it slow", slowMsgs, published)
	}
	if want := uint64(published-1) + uint64(published-slowMsgs); merged < want {
		t.Errorf("merged %d, want at least %d", merged, want)
	}
	if metric < float64(hub.Merged()) {
		t.Errorf("glimpse_http_subscription_updates_merged_total %v, want at least %d", metric, hub.Merged())
	}
}

// TestSubscribeResumeBeyondHistory: with a history of 8 changes, a client
// resuming from an index more than 8 changes back gets snapshots (and a
// history miss is counted); one resuming from an index still in the history
// gets only the updates after it.
func TestSubscribeResumeBeyondHistory(t *testing.T) {
	c := consul.Client()
	p := newProduct("hist")
	httpIn := instance{id: p + "-h", product: p, env: "prod", job: "web", service: "http", address: "127.0.9.1", port: 100}
	grpcIn := instance{id: p + "-g", product: p, env: "prod", job: "web", service: "grpc", address: "127.0.9.2", port: 200}
	register(t, c, httpIn)
	register(t, c, grpcIn)
	cfg := testConfig(t, consul.HTTPAddr())
	cfg.History = 8
	a := startAgent(t, cfg)
	httpAddr, grpcAddr := "http.web.prod."+p+".dc1", "grpc.web.prod."+p+".dc1"
	params := url.Values{"address": {httpAddr, grpcAddr}}
	misses := func() float64 {
		return metricValue(scrape(t, a.HTTPAddr()), "glimpse_http_subscription_history_misses_total")
	}

	conn := dialSubscribe(t, a.HTTPAddr(), params)
	last := map[string]uint64{}
	got := map[string]bool{}
	for len(got) < 2 {
		m := readUntil(t, conn, last, func(m wsMessage) bool { return len(m.Instances) == 1 })
		got[m.Address] = true
	}
	n := max(last[httpAddr], last[grpcAddr]) // the client is up to date at n

	// 12 changes of the http address, each seen before the next, so each is
	// its own change in the agent's history.
	const changes = 12
	idx := make([]uint64, changes+1)
	for i := 1; i <= changes; i++ {
		reRegister(t, c, httpIn, 100+i)
		idx[i] = readUntil(t, conn, last, func(m wsMessage) bool { return m.Address == httpAddr && portOf(m, "127.0.9.1") == 100+i }).Index
	}
	if n >= idx[1] {
		t.Fatalf("resume index %d not before the first change (%d)", n, idx[1])
	}

	// From n: more than 8 changes ago, so snapshots of both addresses.
	before := misses()
	old := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": params["address"], "index": {fmt.Sprint(n)}})
	snaps := map[string]wsMessage{}
	for len(snaps) < 2 {
		m := readMessage(t, old)
		if m.Type != "snapshot" {
			t.Fatalf("resume from %d, beyond the history: %s of %s, want snapshots", n, m.Type, m.Address)
		}
		snaps[m.Address] = m
	}
	if m := snaps[httpAddr]; m.Index != idx[changes] || portOf(m, "127.0.9.1") != 100+changes {
		t.Errorf("http snapshot: index %d port %d, want %d and %d", m.Index, portOf(m, "127.0.9.1"), idx[changes], 100+changes)
	}
	if m := snaps[grpcAddr]; portOf(m, "127.0.9.2") != 200 {
		t.Errorf("grpc snapshot: %+v", m)
	}
	if after := misses(); after != before+1 {
		t.Errorf("glimpse_http_subscription_history_misses_total %v after a resume beyond the history, want %v", after, before+1)
	}

	// From a change still in the history (the 10th of 12; the last few, so
	// that a change of another product in the shared Consul does not push
	// it out): only what changed after it, as updates, and nothing for the
	// address that did not change.
	before = misses()
	within := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": params["address"], "index": {fmt.Sprint(idx[10])}})
	latest := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": params["address"], "index": {fmt.Sprint(idx[changes])}})
	withinLast := map[string]uint64{httpAddr: idx[10], grpcAddr: n}
	m := readUntil(t, within, withinLast, func(wsMessage) bool { return true })
	if m.Type != "update" || m.Address != httpAddr || m.Index <= idx[10] || portOf(m, "127.0.9.1") != 100+changes {
		t.Fatalf("resume from %d, in the history: %+v, want an update of %s with port %d", idx[10], m, httpAddr, 100+changes)
	}
	if after := misses(); after != before {
		t.Errorf("history misses moved from %v to %v on resumes the history serves", before, after)
	}
	// The next message on both is the next change (of the other address):
	// no snapshot came in between.
	reRegister(t, c, grpcIn, 201)
	latestLast := map[string]uint64{httpAddr: idx[changes], grpcAddr: n}
	for name, pair := range map[string]struct {
		conn *websocket.Conn
		last map[string]uint64
	}{"in the history": {within, withinLast}, "at the newest": {latest, latestLast}} {
		m := readUntil(t, pair.conn, pair.last, func(wsMessage) bool { return true })
		if m.Type != "update" || m.Address != grpcAddr || portOf(m, "127.0.9.2") != 201 {
			t.Errorf("resumed %s: next message %+v, want the update of %s with port 201", name, m, grpcAddr)
		}
	}
	// The snapshot subscriber gets it as an update too.
	if m := readUntil(t, old, map[string]uint64{grpcAddr: snaps[grpcAddr].Index}, func(wsMessage) bool { return true }); m.Type != "update" || m.Address != grpcAddr {
		t.Errorf("after snapshots: %+v, want the update of %s", m, grpcAddr)
	}
}

// TestSubscribeLimits: the subscriber and address limits, request
// validation, the Origin check, the read limit and pings.
func TestSubscribeLimits(t *testing.T) {
	c := consul.Client()
	p := newProduct("lim")
	in := instance{id: p + "-1", product: p, env: "prod", job: "web", service: "http", address: "127.0.10.1", port: 80}
	register(t, c, in)
	cfg := testConfig(t, consul.HTTPAddr())
	cfg.Subscribe.MaxSubscribers = 2
	cfg.Subscribe.MaxAddresses = 2
	cfg.Subscribe.PingEvery = 200 * time.Millisecond
	cfg.Subscribe.AllowedOrigins = []string{"https://app.example"}
	a := startAgent(t, cfg)
	hub := a.Cache.Hub()
	addr := "http.web.prod." + p + ".dc1"
	params := url.Values{"address": {addr}}
	d := websocket.DefaultDialer
	waitSubscribers := func(n int) {
		t.Helper()
		testconsul.WaitFor(t, 10*time.Second, func() bool { return hub.Subscribers() == n }, "%d subscribers, want %d", hub.Subscribers(), n)
	}

	// The first subscriber reads in the background and counts pings.
	first := dialSubscribe(t, a.HTTPAddr(), params)
	var pings atomic.Int64
	first.SetPingHandler(func(data string) error {
		pings.Add(1)
		_ = first.SetReadDeadline(time.Now().Add(10 * time.Second))
		return first.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	firstMsgs := make(chan wsMessage, 16)
	firstErr := make(chan error, 1)
	go func() {
		for {
			_ = first.SetReadDeadline(time.Now().Add(10 * time.Second))
			var m wsMessage
			if err := first.ReadJSON(&m); err != nil {
				firstErr <- err
				return
			}
			firstMsgs <- m
		}
	}()
	nextFirst := func(what string) wsMessage {
		t.Helper()
		select {
		case m := <-firstMsgs:
			return m
		case err := <-firstErr:
			t.Fatalf("first subscriber, %s: %v", what, err)
		case <-time.After(15 * time.Second):
			t.Fatalf("first subscriber, %s: nothing within 15s", what)
		}
		return wsMessage{}
	}
	if m := nextFirst("snapshot"); m.Type != "snapshot" || len(m.Instances) != 1 {
		t.Fatalf("first subscriber: %+v, want a snapshot with 1 instance", m)
	}

	// A configured browser origin is allowed; it is the second subscriber.
	second, resp, err := dialWS(t, d, a.HTTPAddr(), params, http.Header{"Origin": {"https://app.example"}})
	if err != nil {
		t.Fatalf("allowed origin https://app.example: %v (%v)", err, resp)
	}
	if m := readMessage(t, second); m.Type != "snapshot" {
		t.Fatalf("allowed origin: %+v, want a snapshot", m)
	}
	waitSubscribers(2)

	// A third one: 503 with a JSON error.
	conn, resp, err := dialWS(t, d, a.HTTPAddr(), params, nil)
	wantHandshakeError(t, "third subscriber", conn, resp, err, http.StatusServiceUnavailable, true, "limit")

	// Requests the agent refuses before any limit: 400 with a JSON error.
	for _, tc := range []struct {
		what   string
		params url.Values
		want   string
	}{
		{"3 addresses", url.Values{"address": {addr, "grpc.web.prod." + p + ".dc1", "x.web.prod." + p + ".dc1"}}, "at most 2"},
		{"no address", url.Values{}, "address"},
		{"an empty address", url.Values{"address": {""}}, "empty"},
		{"a malformed address", url.Values{"address": {"not-an-address"}}, ""},
		{"a malformed address among good ones", url.Values{"address": {addr, "a..b.c.d.e"}}, ""},
		{"a bad health", url.Values{"address": {addr}, "health": {"sickly"}}, "sickly"},
		{"a bad index", url.Values{"address": {addr}, "index": {"ten"}}, "ten"},
		{"a negative index", url.Values{"address": {addr}, "index": {"-1"}}, "-1"},
	} {
		conn, resp, err := dialWS(t, d, a.HTTPAddr(), tc.params, nil)
		wantHandshakeError(t, tc.what, conn, resp, err, http.StatusBadRequest, true, tc.want)
	}

	second.Close()
	waitSubscribers(1)

	// A browser origin of another site: 403, the handshake fails.
	for _, origin := range []string{"https://evil.example", "http://app.example", "null", "https://app.example.evil.example"} {
		conn, resp, err := dialWS(t, d, a.HTTPAddr(), params, http.Header{"Origin": {origin}})
		wantHandshakeError(t, "origin "+origin, conn, resp, err, http.StatusForbidden, true, "origin")
	}
	// The agent's own origin works.
	own, resp, err := dialWS(t, d, a.HTTPAddr(), params, http.Header{"Origin": {"http://" + a.HTTPAddr()}})
	if err != nil {
		t.Fatalf("own origin http://%s: %v (%v)", a.HTTPAddr(), err, resp)
	}
	if m := readMessage(t, own); m.Type != "snapshot" {
		t.Fatalf("own origin: %+v, want a snapshot", m)
	}
	own.Close()
	waitSubscribers(1)

	// A client sending a huge frame is disconnected.
	big, resp, err := dialWS(t, d, a.HTTPAddr(), params, nil)
	if err != nil {
		t.Fatalf("subscriber for the huge frame: %v (%v)", err, resp)
	}
	if m := readMessage(t, big); m.Type != "snapshot" {
		t.Fatalf("%+v, want a snapshot", m)
	}
	waitSubscribers(2)
	_ = big.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_ = big.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("x", 1<<20))) // may fail: the agent hangs up
	_ = big.SetReadDeadline(time.Now().Add(10 * time.Second))
	var readErr error
	for readErr == nil {
		_, _, readErr = big.ReadMessage()
	}
	if ne, ok := readErr.(net.Error); ok && ne.Timeout() {
		t.Fatalf("a client that sent 1 MiB was not disconnected: %v", readErr)
	}
	t.Logf("huge frame: the client read %v", readErr)
	waitSubscribers(1)

	// The first subscriber still works and was pinged all along.
	reRegister(t, c, in, 81)
	for {
		m := nextFirst("update after the huge frame")
		if m.Type == "update" && portOf(m, "127.0.10.1") == 81 {
			break
		}
	}
	testconsul.WaitFor(t, 10*time.Second, func() bool { return pings.Load() >= 3 }, "%d pings, want at least 3 (every 200ms)", pings.Load())
	select {
	case err := <-firstErr:
		t.Fatalf("first subscriber: %v", err)
	default:
	}
	t.Logf("first subscriber: %d pings", pings.Load())
}

// TestSubscribeShutdownCloseFrame: when the agent stops, subscribers get a
// close frame with code 1001 (going away), not just the end of the
// connection.
func TestSubscribeShutdownCloseFrame(t *testing.T) {
	c := consul.Client()
	p := newProduct("bye")
	register(t, c, instance{id: p + "-1", product: p, env: "prod", job: "web", service: "http", address: "127.0.11.1", port: 80})
	a, err := New(context.Background(), testConfig(t, consul.HTTPAddr()), nopLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	t.Cleanup(func() {
		cancel()
		if !stopped {
			<-done
		}
	})
	testconsul.WaitFor(t, 20*time.Second, func() bool {
		z := a.Cache.Zone(a.Zone())
		return z != nil && z.Synced
	}, "local zone never synced")

	conns := []*websocket.Conn{
		dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {"http.web.prod." + p + ".dc1"}}),
		dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {"*.*.*." + p + ".dc1"}}),
	}
	for _, conn := range conns {
		readUntil(t, conn, map[string]uint64{}, func(m wsMessage) bool { return len(m.Instances) == 1 })
	}

	cancel()
	for i, conn := range conns {
		_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		var err error
		for err == nil {
			_, _, err = conn.ReadMessage()
		}
		if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Errorf("subscriber %d at shutdown: %v, want a close frame with code %d", i, err, websocket.CloseGoingAway)
		}
	}
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not stop within 15s")
	}
}
