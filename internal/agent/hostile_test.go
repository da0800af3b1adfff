package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// TestHostileClients: at once, 2,000 long-polls (beyond the limit of
// 1,500: the rest get 503 with Retry-After), 500 idle DNS TCP connections
// (room for 100), oversize and malformed UDP packets, websocket clients
// that never read and one that sends a 1 MiB frame. Meanwhile a plain
// lookup, DNS over UDP and TCP and a reading subscriber are answered
// promptly; afterwards goroutines and heap are back near where they were.
func TestHostileClients(t *testing.T) {
	c := consul.Client()
	p := newProduct("hostile")
	in := instance{id: p, product: p, env: "prod", job: "stream", service: "http", address: "127.0.60.1", port: 8001}
	register(t, c, in)
	cfg := testConfig(t, consul.HTTPAddr())
	cfg.DNSMaxTCPConns = 100
	cfg.Subscribe.MaxLongPolls = 1500
	a := startAgent(t, cfg)
	addr := "http.stream.prod." + p + ".dc1"
	name := addr + "." + domain
	base := "http://" + a.HTTPAddr()
	one := func(m *mdns.Msg) bool { return m.Rcode == mdns.RcodeSuccess && len(m.Answer) == 1 }
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, one, "the instance")
	index := lookup(t, a, addr, "").Index
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	g0, h0 := runtime.NumGoroutine(), heapInUse()

	// 2,000 long-polls.
	tr := &http.Transport{MaxIdleConnsPerHost: -1}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waiting, refused, other atomic.Int32
	var polls sync.WaitGroup
	for i := 0; i < 2000; i++ {
		polls.Add(1)
		go func() {
			defer polls.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/v1/lookup/%s?index=%d&wait=60s", base, addr, index), nil)
			resp, err := hc.Do(req)
			if err != nil {
				return // ended by the test
			}
			defer resp.Body.Close()
			io.Copy(io.Discard, resp.Body)
			switch {
			case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
				refused.Add(1)
			case resp.StatusCode == http.StatusOK:
				waiting.Add(1) // answered by the change below
			default:
				other.Add(1)
			}
		}()
	}
	waitLongPolls(t, a, 1500)
	testconsul.WaitFor(t, 10*time.Second, func() bool { return refused.Load() == 500 }, "%d long-polls refused, want 500", &refused)

	// 500 idle DNS TCP connections.
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := 0; i < 500; i++ {
		c, err := net.Dial("tcp", a.DNSAddr())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	// Oversize and malformed UDP packets.
	u, err := net.Dial("udp", a.DNSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := 0; i < 200; i++ {
		junk := make([]byte, []int{12, 13, 300, 4000, 65000}[i%5])
		junk[0], junk[1], junk[5] = byte(i), 1, 1 // one question that is not there
		u.Write(junk)
	}
	// Websockets that never read, and one sending a 1 MiB frame.
	for i := 0; i < 20; i++ {
		dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {addr}})
	}
	big := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {addr}})
	readMessage(t, big)
	big.WriteMessage(websocket.TextMessage, make([]byte, 1<<20))
	big.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ce *websocket.CloseError
	if _, _, err := big.ReadMessage(); !errors.As(err, &ce) || ce.Code != websocket.CloseMessageTooBig {
		t.Errorf("after a 1 MiB frame: %v, want close 1009", err)
	}
	reader := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {addr}})
	readMessage(t, reader)

	// Everyone else is answered, and promptly.
	for i := 0; i < 20; i++ {
		start := time.Now()
		lookup(t, a, addr, "") // fails the test unless 200
		for _, proto := range []string{"udp", "tcp"} {
			if m := query(t, a.DNSAddr(), proto, name, mdns.TypeSRV, 0); !one(m) {
				t.Fatalf("%s DNS during the flood: %v", proto, m)
			}
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("a lookup and two DNS queries took %v during the flood", d)
		}
	}
	gFlood := runtime.NumGoroutine()
	t.Logf("during the flood: %d goroutines (from %d), DNS TCP held %v, evicted %v", gFlood, g0,
		metricValue(scrape(t, a.HTTPAddr()), "glimpse_dns_tcp_connections"), metricValue(scrape(t, a.HTTPAddr()), "glimpse_dns_tcp_evicted_total"))
	if held := metricValue(scrape(t, a.HTTPAddr()), "glimpse_dns_tcp_connections"); held > 100 {
		t.Errorf("%v DNS TCP connections held, over the limit of 100", held)
	}

	// A change reaches the reading subscriber and wakes the long-polls.
	in.port = 8002
	register(t, c, in)
	m := readMessage(t, reader)
	if m.Type != "update" {
		t.Errorf("the reading subscriber got %+v", m)
	}
	polls.Wait()
	if waiting.Load() != 1500 || other.Load() != 0 {
		t.Errorf("long-polls: %d woken, %d refused, %d other", waiting.Load(), refused.Load(), other.Load())
	}

	for _, c := range idle {
		c.Close()
	}
	idle = nil
	tr.CloseIdleConnections()
	testconsul.WaitFor(t, 20*time.Second, func() bool {
		runtime.GC()
		return runtime.NumGoroutine() < g0+60 // the 22 websockets, 2 goroutines each, are still open
	}, "goroutines never came back down from %d (%d before)", gFlood, g0)
	h1 := heapInUse()
	t.Logf("after: %d goroutines, heap in use %d → %d KiB", runtime.NumGoroutine(), h0>>10, h1>>10)
	if h1 > h0+16<<20 {
		t.Errorf("heap in use grew from %d to %d KiB", h0>>10, h1>>10)
	}
}

// TestShutdownUnderLoad: the agent stops while DNS over UDP and TCP,
// websockets and long-polls are busy. Run returns; every subscriber gets a
// close frame (1001); every long-poll is answered; every TCP DNS exchange
// ends with a whole answer or a closed connection, never a cut answer.
func TestShutdownUnderLoad(t *testing.T) {
	c := consul.Client()
	p := newProduct("shut")
	register(t, c, instance{id: p, product: p, env: "prod", job: "stream", service: "http", address: "127.0.61.1", port: 8001})
	a, stop := stoppableAgent(t, testConfig(t, consul.HTTPAddr()))
	addr := "http.stream.prod." + p + ".dc1"
	name := addr + "." + domain
	base := "http://" + a.HTTPAddr()
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 1 }, "the instance")

	var subs []*websocket.Conn
	for i := 0; i < 50; i++ {
		s := dialSubscribe(t, a.HTTPAddr(), url.Values{"address": {addr}})
		readMessage(t, s)
		subs = append(subs, s)
	}
	index := lookup(t, a, addr, "").Index
	var polls sync.WaitGroup
	var pollOK atomic.Int32
	for i := 0; i < 100; i++ {
		polls.Add(1)
		go func() {
			defer polls.Done()
			resp, err := http.Get(fmt.Sprintf("%s/v1/lookup/%s?index=%d&wait=60s", base, addr, index))
			if err == nil {
				if resp.StatusCode == 200 {
					pollOK.Add(1)
				}
				resp.Body.Close()
			}
		}()
	}

	var answered, closed, cut atomic.Int32
	done := make(chan struct{})
	running := func() bool {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	var load sync.WaitGroup
	for i := 0; i < 20; i++ {
		load.Add(1)
		go func() {
			defer load.Done()
			conn, err := net.Dial("tcp", a.DNSAddr())
			if err != nil {
				return
			}
			defer conn.Close()
			dc := &mdns.Conn{Conn: conn}
			for running() {
				m := new(mdns.Msg)
				m.SetQuestion(name, mdns.TypeSRV)
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				if err := dc.WriteMsg(m); err != nil {
					closed.Add(1)
					return
				}
				r, err := dc.ReadMsg()
				switch {
				case err == nil && r.Id == m.Id && len(r.Answer) == 1:
					answered.Add(1)
				case err != nil && (errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "connection reset")):
					closed.Add(1)
					return
				default:
					cut.Add(1)
					t.Errorf("TCP exchange at shutdown: %v", err)
					return
				}
			}
		}()
	}
	for i := 0; i < 10; i++ {
		load.Add(1)
		go func() {
			defer load.Done()
			for running() {
				m := new(mdns.Msg)
				m.SetQuestion(name, mdns.TypeSRV)
				(&mdns.Client{Timeout: 500 * time.Millisecond}).Exchange(m, a.DNSAddr())
			}
		}()
	}
	testconsul.WaitFor(t, 10*time.Second, func() bool { return answered.Load() > 500 }, "the TCP load never got going")
	if v := metricValue(scrape(t, a.HTTPAddr()), `glimpse_http_subscribers{kind="longpoll"}`); v != 100 {
		t.Logf("%v long-polls waiting at shutdown", v)
	}

	began := time.Now()
	stop()
	t.Logf("stopped in %v", time.Since(began).Round(time.Millisecond))
	close(done)
	load.Wait()
	polls.Wait()
	if pollOK.Load() != 100 {
		t.Errorf("%d of 100 long-polls answered at shutdown", pollOK.Load())
	}
	for i, s := range subs {
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		var ce *websocket.CloseError
		if _, _, err := s.ReadMessage(); !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Errorf("subscriber %d: %v, want close 1001", i, err)
		}
	}
	t.Logf("TCP DNS: %d answered, %d connections closed by the shutdown, %d cut", answered.Load(), closed.Load(), cut.Load())
}
