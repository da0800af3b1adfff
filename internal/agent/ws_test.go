package agent

import (
	"encoding/json"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	gapi "github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/internal/testconsul"
)

// wsMessage is one websocket message.
type wsMessage = gapi.Message

func dialSubscribe(t testing.TB, httpAddr string, params url.Values) *websocket.Conn {
	t.Helper()
	u := url.URL{Scheme: "ws", Host: httpAddr, Path: "/v1/subscribe", RawQuery: params.Encode()}
	conn, resp, err := websocket.DefaultDialer.Dial(u.String(), nil)
	if err != nil {
		t.Fatalf("dial %s: %v (%v)", u.String(), err, resp)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func readMessage(t testing.TB, conn *websocket.Conn) wsMessage {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	var m wsMessage
	if err := conn.ReadJSON(&m); err != nil {
		t.Fatalf("read: %v", err)
	}
	return m
}

// readUntil reads messages until cond holds for one, checking that each
// address's messages come in index order.
func readUntil(t testing.TB, conn *websocket.Conn, last map[string]uint64, cond func(wsMessage) bool) wsMessage {
	t.Helper()
	for {
		m := readMessage(t, conn)
		if m.Index <= last[m.Address] {
			t.Fatalf("%s: index %d after %d", m.Address, m.Index, last[m.Address])
		}
		last[m.Address] = m.Index
		if cond(m) {
			return m
		}
	}
}

// TestSubscribe: a snapshot per matching address, then updates in index
// order, for exact and wildcard subscriptions, for an address that appears
// after subscribing and for one that disappears.
func TestSubscribe(t *testing.T) {
	c := consul.Client()
	p := newProduct("ws")
	register(t, c, instance{id: p + "-1", product: p, env: "prod", job: "web", service: "http", address: "127.0.6.1", port: 80})
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	exact := "http.web.prod." + p + ".dc1"
	wild := "*.web.prod." + p + ".dc1"
	ex := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {exact}})
	wi := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {wild}})
	exLast, wiLast := map[string]uint64{}, map[string]uint64{}

	for _, conn := range []*websocket.Conn{ex, wi} {
		m := readMessage(t, conn)
		if m.Type != "snapshot" || m.Address != exact || len(m.Instances) != 1 {
			t.Fatalf("first message %+v, want a snapshot of %s with 1 instance", m, exact)
		}
	}
	exLast[exact], wiLast[exact] = 1, 1

	register(t, c, instance{id: p + "-2", product: p, env: "prod", job: "web", service: "http", address: "127.0.6.2", port: 80})
	for _, pair := range []struct {
		conn *websocket.Conn
		last map[string]uint64
	}{{ex, exLast}, {wi, wiLast}} {
		m := readUntil(t, pair.conn, pair.last, func(m wsMessage) bool { return m.Address == exact && len(m.Instances) == 2 })
		if m.Type != "update" {
			t.Fatalf("change came as %q, want update", m.Type)
		}
	}

	// A new address matching the wildcard arrives as a snapshot.
	grpc := "grpc.web.prod." + p + ".dc1"
	register(t, c, instance{id: p + "-g", product: p, env: "prod", job: "web", service: "grpc", address: "127.0.6.3", port: 90})
	m := readUntil(t, wi, wiLast, func(m wsMessage) bool { return m.Address == grpc })
	if m.Type != "snapshot" || len(m.Instances) != 1 {
		t.Fatalf("new address: %+v, want a snapshot with 1 instance", m)
	}
	// It disappears: an update with an empty list.
	if err := c.Agent().ServiceDeregister(p + "-g"); err != nil {
		t.Fatal(err)
	}
	m = readUntil(t, wi, wiLast, func(m wsMessage) bool { return m.Address == grpc })
	if m.Type != "update" || len(m.Instances) != 0 || m.Instances == nil {
		t.Fatalf("vanished address: %+v, want an update with an empty list", m)
	}

	// Resume from the last index seen: only what changed after it.
	resumeAt := exLast[exact]
	register(t, c, instance{id: p + "-3", product: p, env: "prod", job: "web", service: "http", address: "127.0.6.4", port: 80})
	readUntil(t, ex, exLast, func(m wsMessage) bool { return len(m.Instances) == 3 })
	re := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {exact}, "index": {fmt.Sprint(resumeAt)}})
	m = readMessage(t, re)
	if m.Type != "update" || m.Index <= resumeAt || len(m.Instances) != 3 {
		t.Fatalf("resumed at %d: %+v, want an update after it with 3 instances", resumeAt, m)
	}
	// An index the history cannot serve (ahead of the agent): snapshots.
	fresh := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {exact}, "index": {"999999999"}})
	if m := readMessage(t, fresh); m.Type != "snapshot" || len(m.Instances) != 3 {
		t.Fatalf("resume beyond the history: %+v, want a snapshot", m)
	}
}

// TestSubscribeFanOut: 1,000 websocket subscribers on one address all
// receive a change.
func TestSubscribeFanOut(t *testing.T) {
	c := consul.Client()
	p := newProduct("fan")
	register(t, c, instance{id: p + "-1", product: p, env: "prod", job: "web", service: "http", address: "127.0.7.1", port: 80})
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	addr := "http.web.prod." + p + ".dc1"
	const n = 1000
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {addr}})
		if m := readMessage(t, conns[i]); m.Type != "snapshot" {
			t.Fatalf("subscriber %d: first message %+v", i, m)
		}
	}
	register(t, c, instance{id: p + "-2", product: p, env: "prod", job: "web", service: "http", address: "127.0.7.2", port: 80})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			for {
				_, b, err := conn.ReadMessage()
				if err != nil {
					errs <- fmt.Errorf("subscriber %d: %w", i, err)
					return
				}
				var m wsMessage
				if err := json.Unmarshal(b, &m); err != nil {
					errs <- err
					return
				}
				if len(m.Instances) == 2 {
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestSubscribeKeepsRemoteZone: a websocket subscription reads its zone, so
// a remote zone stays watched while the subscription is open, and is
// dropped once it closes.
func TestSubscribeKeepsRemoteZone(t *testing.T) {
	const dc = "dc9"
	idle := time.Second
	a, addr := agentWithRemoteZone(t, dc, "127.0.0.9", "wskeep", idle)
	conn := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {addr}})
	last := map[string]uint64{}
	readUntil(t, conn, last, func(m wsMessage) bool { return len(m.Instances) == 1 })

	// Four idle periods with nothing read but the subscription: still there.
	deadline := time.Now().Add(4 * idle)
	for time.Now().Before(deadline) {
		if z := a.Cache.Zone(dc); z == nil {
			t.Fatalf("%s dropped while subscribed", dc)
		}
		select {
		case <-a.Cache.Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}
	conn.Close()
	testconsul.WaitFor(t, 10*time.Second, func() bool { return a.Cache.Zone(dc) == nil }, "%s never dropped once unsubscribed", dc)
}
