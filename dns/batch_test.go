//go:build linux

package dns

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
)

// echoRaw answers every query from the packet: the query with the QR bit
// set, written with Write as the fast path does. It allocates nothing.
type echoRaw struct{ buf []byte }

func (h *echoRaw) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	m := new(mdns.Msg)
	m.SetReply(r)
	w.WriteMsg(m)
}

func (h *echoRaw) ServeRaw(pkt []byte, w mdns.ResponseWriter) bool {
	h.buf = append(h.buf[:0], pkt...)
	h.buf[2] |= 0x80
	w.Write(h.buf)
	return true
}

// idQuery returns a minimal query packet with id.
func idQuery(id uint16) []byte {
	m := new(mdns.Msg)
	m.SetQuestion("a.example.", mdns.TypeA)
	m.Id = id
	pkt, _ := m.Pack()
	return pkt
}

// TestUDPBatches: bursts of queries from many client sockets, several
// batches' worth at once, each get exactly their own answer at their own
// address.
func TestUDPBatches(t *testing.T) {
	s := startUDP(t, &echoRaw{})
	to := netip.MustParseAddrPort(s.Addr())
	const clients, each = 8, 3 * batchSize
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	// Every client sends its burst before any reads, so the server finds
	// many datagrams waiting and reads them in batches.
	for i, c := range conns {
		for k := range each {
			if _, err := c.WriteToUDPAddrPort(idQuery(uint16(i<<8|k)), to); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, c := range conns {
		got := map[uint16]bool{}
		buf := make([]byte, 512)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for len(got) < each {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("client %d: %d of %d answers: %v", i, len(got), each, err)
			}
			id := binary.BigEndian.Uint16(buf[:2])
			if from != to || n < 12 || buf[2]&0x80 == 0 || int(id>>8) != i || got[id] {
				t.Fatalf("client %d: answer %d (from %v, %d bytes): not one of its own, or twice", i, id, from, n)
			}
			got[id] = true
		}
	}
}

// TestUDPBatchDetach: a handler that waits detaches in the middle of a
// batch; the queries after it in the batch, and later ones, are answered
// meanwhile, and its own answer comes once it is released.
func TestUDPBatchDetach(t *testing.T) {
	h := blockingHandler{release: make(chan struct{})}
	s := startUDP(t, h)
	to := netip.MustParseAddrPort(s.Addr())
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	send := func(name string, id uint16) {
		m := new(mdns.Msg)
		m.SetQuestion(name, mdns.TypeA)
		m.Id = id
		pkt, _ := m.Pack()
		if _, err := c.WriteToUDPAddrPort(pkt, to); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		send("free.", uint16(round*100))
		send("block.", uint16(round*100+1))
		for k := range 2 * batchSize {
			send("free.", uint16(round*100+2+k))
		}
	}
	buf := make([]byte, 512)
	read := func() uint16 {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			t.Fatalf("an answer never came: %v", err)
		}
		return binary.BigEndian.Uint16(buf[:2])
	}
	free := 3 * (1 + 2*batchSize)
	for range free {
		if id := read(); id%100 == 1 {
			t.Fatalf("a waiting query (%d) was answered before its release", id)
		}
	}
	close(h.release)
	for range 3 {
		if id := read(); id%100 != 1 {
			t.Fatalf("answer %d after the release, want a waiting query's", id)
		}
	}
}

// TestUDPBatchNoGarbage: a steady stream of queries answered through the
// batched reader and glimpse's fast path (the answer patched in the
// batch's own buffer) allocates nothing per query.
func TestUDPBatchNoGarbage(t *testing.T) {
	cc, cfg := benchCache(t)
	s := startUDP(t, NewHandler(cc, HandlerOptions{Config: cfg, LocalZone: "dc1"}))
	to := netip.MustParseAddrPort(s.Addr())
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := new(mdns.Msg)
	q.SetQuestion("http.stream.prod.goku.dc1.srv.glimpse.io.", mdns.TypeSRV)
	pkt, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	exchangeN := func(n int) {
		for range n / 16 {
			for range 16 {
				c.WriteToUDPAddrPort(pkt, to)
			}
			for range 16 {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, _, err := c.ReadFromUDPAddrPort(buf); err != nil || n < 12 || binary.BigEndian.Uint16(buf[6:]) != 4 {
					t.Fatalf("answer: %d bytes, %v", n, err)
				}
			}
		}
	}
	exchangeN(1024) // warm up: buffers grown, goroutines started
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const n = 16384
	exchangeN(n)
	runtime.ReadMemStats(&after)
	if per := float64(after.Mallocs-before.Mallocs) / n; per > 0.05 {
		t.Errorf("%.3f allocations per query (%d for %d queries), want none", per, after.Mallocs-before.Mallocs, n)
	}
}

// TestHotAnswers: a reader's cache of addresses answers what the zone's
// tables answer, and never from a state of the zone that is gone: a change
// to the address, to another product of the zone, or the address's end.
func TestHotAnswers(t *testing.T) {
	c, cfg := benchCache(t)
	h := NewHandler(c, HandlerOptions{Config: cfg, LocalZone: "dc1"})
	hot := &udpWriter{batch: &udpBatch{hot: newHotAnswers()}}
	plain := &recorder{}
	ask := func(qname string, qtype uint16) (fromHot, fromMaps []byte) {
		t.Helper()
		m := new(mdns.Msg)
		m.SetQuestion(qname, qtype)
		m.Id = 7
		pkt, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		hot.batch.out[0] = hot.batch.out[0][:0]
		if h.ServeRaw(pkt, hot) {
			fromHot = hot.batch.out[0]
		}
		plain.out = nil
		if h.ServeRaw(pkt, plain) {
			fromMaps = plain.out[0]
		}
		if !bytes.Equal(fromHot, fromMaps) {
			t.Fatalf("%s: the cache answered %x, the tables %x", qname, fromHot, fromMaps)
		}
		return fromHot, fromMaps
	}
	port := func(ans []byte) uint16 {
		t.Helper()
		m := new(mdns.Msg)
		if err := m.Unpack(ans); err != nil || len(m.Answer) == 0 {
			t.Fatalf("answer %x: %v", ans, err)
		}
		return m.Answer[0].(*mdns.SRV).Port
	}
	const name = "http.stream.prod.goku.dc1.srv.glimpse.io."
	instance := func(port uint16) []cache.Instance {
		return []cache.Instance{{Node: "nodea", Address: netip.MustParseAddr("10.0.0.1"), Port: port, Env: "prod", Job: "stream", Service: "http"}}
	}
	for range 3 {
		if a, _ := ask(name, mdns.TypeSRV); port(a) != 8000 {
			t.Fatalf("port %d, want 8000", port(a))
		}
		ask("HTTP.Stream.prod.goku.dc1.srv.glimpse.io.", mdns.TypeA)
	}
	// The address changes: the next query has the new answer.
	c.SetProduct("dc1", "goku", instance(9000), 0)
	if a, _ := ask(name, mdns.TypeSRV); port(a) != 9000 {
		t.Fatalf("after the change: port %d, want 9000", port(a))
	}
	// Another product of the zone changes: still the same answer.
	c.SetProduct("dc1", "vegeta", []cache.Instance{{Node: "nodeb", Address: netip.MustParseAddr("10.0.0.2"), Port: 80, Env: "prod", Job: "web", Service: "http"}}, 0)
	if a, _ := ask(name, mdns.TypeSRV); port(a) != 9000 {
		t.Fatalf("after another product's change: port %d, want 9000", port(a))
	}
	ask("http.web.prod.vegeta.dc1.srv.glimpse.io.", mdns.TypeSRV)
	// The address ends: no answer from the cache, the full path answers.
	c.SetProduct("dc1", "goku", instance(9000)[:0], 0)
	if a, _ := ask(name, mdns.TypeSRV); a != nil {
		t.Fatalf("an address that ended was answered: %x", a)
	}

	// A set answers for its own names and snapshot only, and keeps the
	// two latest.
	z := c.Zone("dc1")
	var aas []*addrAnswers
	for _, product := range []string{"vegeta", "goku"} {
		if p := z.Products.Get(product); p != nil {
			for _, a := range p.Addresses {
				aas = append(aas, a.Derived.(*addrAnswers))
			}
		}
	}
	c.SetProduct("dc1", "goku", instance(80), 0)
	z = c.Zone("dc1")
	for _, a := range z.Products.Get("goku").Addresses {
		aas = append(aas, a.Derived.(*addrAnswers))
	}
	if len(aas) != 2 {
		t.Fatalf("%d addresses, want 2", len(aas))
	}
	var set [2]hotSlot
	hotPut(&set, z, aas[0])
	hotPut(&set, z, aas[1])
	for _, aa := range aas {
		if hotGet(&set, z, aa.name) != aa {
			t.Fatalf("a set did not answer for %s", aa.name)
		}
	}
	if hotGet(&set, z, "http.web.prod.vegeta.dc2.srv.glimpse.io.") != nil {
		t.Error("a set answered for another name")
	}
	hotPut(&set, z, aas[1])
	if hotGet(&set, z, aas[0].name) != nil {
		t.Error("a set kept more than two entries")
	}
	c.SetProduct("dc1", "vegeta", nil, 0)
	if hotGet(&set, c.Zone("dc1"), aas[1].name) != nil {
		t.Error("a set answered for a later snapshot")
	}

	// The table lets go of what it holds once the cache has changed, at
	// the first query a second later.
	tab := hot.batch.hot
	tab.sweep(time.Now().UnixNano(), c)
	hotPut(tab.set(aas[1].name), c.Zone("dc1"), aas[1])
	now := time.Now().UnixNano()
	tab.sweep(now, c)
	if hotGet(tab.set(aas[1].name), c.Zone("dc1"), aas[1].name) == nil {
		t.Fatal("the table was emptied with no change to the cache")
	}
	c.SetProduct("dc1", "vegeta", instance(81), 0)
	tab.sweep(now+int64(time.Second)/2, c)
	if tab.set(aas[1].name)[0].aa == nil {
		t.Fatal("the table was emptied within a second")
	}
	tab.sweep(now+int64(time.Second), c)
	if tab.set(aas[1].name)[0].aa != nil {
		t.Fatal("the table kept its answers a second after a change")
	}
}

// batchedVisible says whether batchedServeRaw shows the answers of a
// batched reader (they are sent from the batch's own buffers on Linux).
const batchedVisible = true

// batchedServeRaw answers pkt through ServeRaw as a batched reader with
// batch b does, and returns the answer and whether the fast path gave it.
func batchedServeRaw(h *Handler, b *udpBatch, pkt []byte) ([]byte, bool) {
	b.out[0], b.has[0] = b.out[0][:0], false
	ok := h.ServeRaw(pkt, &udpWriter{batch: b})
	return b.out[0], ok
}
