package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gapi "github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/client"
	"github.com/rugby110/glimpse/internal/testconsul"
)

// tcpProxy forwards connections to target; it can drop them all, or go
// silent (forward nothing back, close nothing) as a dead network would.
type tcpProxy struct {
	ln     net.Listener
	target string
	silent atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.drop() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go io.Copy(s, c)
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 && !p.silent.Load() {
						c.Write(buf[:n])
					}
					if err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

// drop closes every connection.
func (p *tcpProxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// next returns the next event of w, failing after 20 s.
func nextEvent(t *testing.T, w *client.Watch) client.Event {
	t.Helper()
	select {
	case e, ok := <-w.Events():
		if !ok {
			t.Fatal("the watch ended")
		}
		return e
	case <-time.After(20 * time.Second):
		t.Fatal("no event within 20 s")
	}
	return client.Event{}
}

// waitEvent reads events until one satisfies cond, and returns it.
func waitEvent(t *testing.T, w *client.Watch, what string, cond func(client.Event) bool) client.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		e := nextEvent(t, w)
		t.Logf("event %s %s index %d, %d instances, resynced %v, err %v", e.Type, e.Address, e.Index, len(e.Instances), e.Resynced, e.Err)
		if cond(e) {
			return e
		}
	}
	t.Fatalf("no %s within 30 s", what)
	return client.Event{}
}

// ports returns the ports of instances, sorted by how they came.
func portsOf(in []gapi.Instance) string {
	var s []string
	for _, i := range in {
		s = append(s, fmt.Sprint(i.Port))
	}
	return strings.Join(s, ",")
}

// clientGoroutines counts the goroutines running code of package client.
func clientGoroutines() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	count := 0
	for _, g := range strings.Split(string(buf[:n]), "\n\n") {
		if strings.Contains(g, "glimpse/client.") {
			count++
		}
	}
	return count
}

// TestClientWatch: a Watch through a dropped TCP connection (it resumes:
// only the change made meanwhile), an agent restart during which one
// address changes and another goes away (fresh snapshots, Resynced, and
// the vanished address reported gone), a history miss (snapshots), and a
// dead connection (found within two ping intervals, DeadAfter); after
// cancel, no goroutine of the client is left.
func TestClientWatch(t *testing.T) {
	c := consul.Client()
	p := newProduct("cw")
	register(t, c, instance{id: p + "-a", product: p, env: "prod", job: "stream", service: "http", address: "127.0.7.1", port: 8001})
	register(t, c, instance{id: p + "-b", product: p, env: "prod", job: "stream", service: "http", address: "127.0.7.2", port: 8002})
	register(t, c, instance{id: p + "-g", product: p, env: "prod", job: "stream", service: "grpc", address: "127.0.7.3", port: 9001})
	httpAddr, grpcAddr := "http.stream.prod."+p+".dc1", "grpc.stream.prod."+p+".dc1"

	cfg := testConfig(t, consul.HTTPAddr())
	cfg.Subscribe.PingEvery = 500 * time.Millisecond
	cfg.History = 8
	a, stop := stoppableAgent(t, cfg)
	proxy := newTCPProxy(t, a.HTTPAddr())
	cl, err := client.New(proxy.addr())
	if err != nil {
		t.Fatal(err)
	}
	before := clientGoroutines()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := cl.Watch(ctx, []string{httpAddr, "*.stream.prod." + p + ".dc1"}, client.WatchOptions{DeadAfter: time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	waitEvent(t, w, "synced", func(e client.Event) bool { return e.Type == client.Synced })
	if st := w.State(); portsOf(st[httpAddr]) != "8001,8002" || portsOf(st[grpcAddr]) != "9001" {
		t.Fatalf("state after the first sync: %v", st)
	}

	// A dropped connection: the change made meanwhile comes as an update,
	// resumed, not as snapshots.
	proxy.drop()
	register(t, c, instance{id: p + "-c", product: p, env: "prod", job: "stream", service: "http", address: "127.0.7.4", port: 8003})
	e := waitEvent(t, w, "the update after the drop", func(e client.Event) bool {
		if e.Type == client.Snapshot {
			t.Errorf("a snapshot after a resumable drop: %+v", e)
		}
		return e.Type == client.Update && e.Address == httpAddr && len(e.Instances) == 3
	})
	if e.Resynced {
		t.Errorf("a resumed update marked Resynced")
	}

	// The agent restarts; meanwhile one address changes, the other goes.
	stop()
	waitEvent(t, w, "disconnected", func(e client.Event) bool { return e.Type == client.Disconnected })
	if err := c.Agent().ServiceDeregister(p + "-a"); err != nil {
		t.Fatal(err)
	}
	if err := c.Agent().ServiceDeregister(p + "-g"); err != nil {
		t.Fatal(err)
	}
	cfg2 := testConfig(t, consul.HTTPAddr())
	cfg2.HTTPAddr = a.HTTPAddr()
	cfg2.Subscribe.PingEvery = 500 * time.Millisecond
	cfg2.History = 8
	a2, _ := stoppableAgent(t, cfg2)
	var gone, resynced bool
	waitEvent(t, w, "synced after the restart", func(e client.Event) bool {
		switch {
		case e.Type == client.Update && e.Address == grpcAddr && len(e.Instances) == 0 && e.Resynced:
			gone = true
		case e.Type == client.Snapshot && e.Address == httpAddr && e.Resynced:
			resynced = true
		}
		return e.Type == client.Synced
	})
	if !gone || !resynced {
		t.Errorf("after the restart: vanished address reported %v, snapshots marked Resynced %v", gone, resynced)
	}
	if st := w.State(); portsOf(st[httpAddr]) != "8002,8003" || len(st[grpcAddr]) != 0 || len(st) != 1 {
		t.Fatalf("state after the restart: %v", st)
	}

	// A history miss: more changes than the agent's history holds while
	// the watch is away; it gets snapshots.
	proxy.silent.Store(true)
	began := time.Now()
	e = waitEvent(t, w, "disconnected", func(e client.Event) bool { return e.Type == client.Disconnected })
	// Two ping intervals (DeadAfter); a second more for a loaded machine.
	if took := time.Since(began); took > 2*cfg2.Subscribe.PingEvery+time.Second {
		t.Errorf("a dead connection found after %v", took)
	}
	// Each change lands in the agent before the next (so none are merged
	// into one), 12 in all, more than its history of 8.
	direct, err := client.New(a2.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	batchAddr := "http.batch.prod." + p + ".dc1"
	for i := range 12 {
		register(t, c, instance{id: fmt.Sprintf("%s-x%d", p, i), product: p, env: "prod", job: "batch", service: "http", address: "127.0.7.9", port: 7000 + i})
		testconsul.WaitFor(t, 10*time.Second, func() bool {
			l, err := direct.Lookup(ctx, batchAddr, "")
			return err == nil && len(l.Instances) == i+1
		}, "change %d in the agent", i)
	}
	register(t, c, instance{id: p + "-d", product: p, env: "prod", job: "stream", service: "http", address: "127.0.7.5", port: 8004})
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		l, err := direct.Lookup(ctx, httpAddr, "")
		return err == nil && len(l.Instances) == 3
	}, "the last change in the agent")
	proxy.silent.Store(false)
	proxy.drop()
	e = waitEvent(t, w, "the snapshot after a history miss", func(e client.Event) bool {
		return e.Type == client.Snapshot && e.Address == httpAddr && len(e.Instances) == 3
	})
	if !e.Resynced {
		t.Errorf("snapshot after a history miss not marked Resynced")
	}
	l, err := direct.Lookup(ctx, httpAddr, "")
	if err != nil || portsOf(l.Instances) != portsOf(w.State()[httpAddr]) {
		t.Errorf("the watch's state %v, the agent's %v (%v)", w.State()[httpAddr], l, err)
	}

	cancel()
	select {
	case <-w.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the watch did not end after cancel")
	}
	testconsul.WaitFor(t, 5*time.Second, func() bool { return clientGoroutines() <= before }, "client goroutines left after cancel: %d", clientGoroutines())
}

// TestClientCalls: every call of the client against a real agent, and its
// errors.
func TestClientCalls(t *testing.T) {
	c := consul.Client()
	p := newProduct("cc")
	register(t, c, instance{id: p + "-a", product: p, env: "prod", job: "stream", service: "http", address: "127.0.8.1", port: 8001})
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	ctx := context.Background()
	cl, err := client.New("http://" + a.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	addr := "http.stream.prod." + p + ".dc1"
	l, err := cl.Lookup(ctx, addr, "")
	if err != nil || portsOf(l.Instances) != "8001" {
		t.Fatalf("lookup: %+v, %v", l, err)
	}
	// A long-poll returns with the change.
	done := make(chan *gapi.Lookup, 1)
	go func() {
		l2, err := cl.LookupWait(ctx, addr, "any", l.Index, 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		done <- l2
	}()
	time.Sleep(100 * time.Millisecond)
	register(t, c, instance{id: p + "-b", product: p, env: "prod", job: "stream", service: "http", address: "127.0.8.2", port: 8002})
	select {
	case l2 := <-done:
		if l2 == nil || l2.Index <= l.Index || portsOf(l2.Instances) != "8001,8002" {
			t.Fatalf("long-poll: %+v", l2)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the long-poll did not return with the change")
	}
	if _, err := cl.Lookup(ctx, "a.b.c", ""); err == nil || !strings.Contains(err.Error(), "3 labels") {
		t.Errorf("a bad address: %v", err)
	}
	if _, err := cl.Lookup(ctx, addr, "sometimes"); !client.IsStatus(err, http.StatusBadRequest) {
		t.Errorf("a bad health: %v", err)
	}
	if z, err := cl.Zones(ctx); err != nil || len(z.Zones) == 0 || z.Zones[0].Zone != "dc1" {
		t.Errorf("zones: %+v, %v", z, err)
	}
	if top, err := cl.Topology(ctx, ""); err != nil || !top.Products[p].Watched {
		t.Errorf("topology: %+v, %v", top, err)
	}

	// Providers: over TCP with the token, and over the socket.
	tcp, _ := client.New(a.HTTPAddr(), client.WithToken(testToken))
	body := &gapi.ProviderBody{Instances: []gapi.ProviderInstance{{Service: "http", Job: "j", Env: "prod", Product: p, Port: 9100}}}
	if r, err := tcp.PutProvider(ctx, "cli-test", body); err != nil || r.Instances != 1 {
		t.Fatalf("put: %+v, %v", r, err)
	}
	if _, err := cl.PutProvider(ctx, "cli-test", body); !client.IsStatus(err, http.StatusForbidden) {
		t.Errorf("a write over TCP without a token: %v", err)
	}
	sock, _ := client.New("", client.WithSocket(a.http.Socket()))
	if got, err := sock.Provider(ctx, "cli-test"); err != nil || len(got.Instances) != 1 || got.Instances[0].Port != 9100 {
		t.Errorf("get: %+v, %v", got, err)
	}
	if list, err := sock.Providers(ctx); err != nil || len(list) == 0 {
		t.Errorf("list: %+v, %v", list, err)
	}
	if r, err := tcp.DeleteProvider(ctx, "cli-test"); err != nil || !r.Deleted {
		t.Errorf("delete: %+v, %v", r, err)
	}
	if _, err := sock.Provider(ctx, "cli-test"); !client.IsStatus(err, http.StatusNotFound) {
		t.Errorf("get after delete: %v", err)
	}
}
