package dns

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
)

// discardWriter is a ResponseWriter that drops what is written, so the
// benchmark measures the handler alone.
type discardWriter struct{ n int }

func (w *discardWriter) LocalAddr() net.Addr         { return &net.UDPAddr{} }
func (w *discardWriter) RemoteAddr() net.Addr        { return &net.UDPAddr{} }
func (w *discardWriter) WriteMsg(m *mdns.Msg) error  { b, err := m.Pack(); w.n += len(b); return err }
func (w *discardWriter) Write(b []byte) (int, error) { w.n += len(b); return len(b), nil }
func (w *discardWriter) Close() error                { return nil }
func (w *discardWriter) TsigStatus() error           { return nil }
func (w *discardWriter) TsigTimersOnly(bool)         {}
func (w *discardWriter) Hijack()                     {}

func benchCache(testing.TB) (*cache.Cache, Config) {
	cfg := Config{Domain: "srv.glimpse.io.", TTL: 5, NegativeTTL: 5}
	c := cache.New(NewBuilder(cfg))
	c.AddZone("dc1", true)
	var in []cache.Instance
	for i := 0; i < 4; i++ {
		in = append(in, cache.Instance{Node: "node" + string(rune('a'+i)), Address: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}),
			Port: 8000, Env: "prod", Job: "stream", Service: "http"})
	}
	c.SetProduct("dc1", "goku", in, 0)
	c.SetSynced("dc1", true)
	return c, cfg
}

func BenchmarkServeSRV(b *testing.B) {
	c, cfg := benchCache(b)
	h := NewHandler(c, HandlerOptions{Config: cfg, LocalZone: "dc1"})
	for _, tc := range []struct {
		name  string
		qname string
		qtype uint16
	}{
		{"SRV", "http.stream.prod.goku.dc1.srv.glimpse.io.", mdns.TypeSRV},
		{"A", "http.stream.prod.goku.dc1.srv.glimpse.io.", mdns.TypeA},
		{"SRV-mixed-case", "HTTP.stream.prod.goku.dc1.srv.glimpse.io.", mdns.TypeSRV},
		{"NXDOMAIN", "nope.stream.prod.goku.dc1.srv.glimpse.io.", mdns.TypeSRV},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := new(mdns.Msg)
			r.SetQuestion(tc.qname, tc.qtype)
			r.SetEdns0(1232, false)
			w := &discardWriter{}
			b.ReportAllocs()
			for b.Loop() {
				h.ServeDNS(w, r)
			}
		})
	}
}

// BenchmarkUDPAnswer is one query through the UDP worker's path: unpack,
// handler, write to a UDP socket.
func BenchmarkUDPAnswer(b *testing.B) {
	c, cfg := benchCache(b)
	h := NewHandler(c, HandlerOptions{Config: cfg, LocalZone: "dc1"})
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	u := newUDPServer(conn, h)
	w := &udpWriter{conn: conn, to: sink.LocalAddr().(*net.UDPAddr).AddrPort()}
	r := new(mdns.Msg)
	r.SetQuestion("http.stream.prod.goku.dc1.srv.glimpse.io.", mdns.TypeSRV)
	r.SetEdns0(4096, false)
	pkt, err := r.Pack()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		serveRaw(u.h, pkt, w)
	}
}

// BenchmarkServeRawFleet answers the bench's shape of load through the fast
// path: 1,000 products of 5 jobs of 4 instances, an SRV and an A query for
// every address in turn, so that each query finds its answers cold in the
// CPU's caches as it does under dnsperf.
func BenchmarkServeRawFleet(b *testing.B) {
	cfg := Config{Domain: "srv.glimpse.io.", TTL: 5, NegativeTTL: 5}
	c := cache.New(NewBuilder(cfg))
	c.AddZone("dc1", true)
	const products, jobs, perJob = 1000, 5, 4
	for p := range products {
		var in []cache.Instance
		for j := range jobs {
			for k := range perJob {
				in = append(in, cache.Instance{Node: fmt.Sprintf("node%d", (p*jobs*perJob+k*jobs+j)%997),
					Address: netip.AddrFrom4([4]byte{10, byte(p >> 8), byte(p), byte(j*perJob + k + 1)}),
					Port:    8000, Env: "prod", Job: fmt.Sprintf("job%d", j), Service: "http"})
			}
		}
		c.SetProduct("dc1", fmt.Sprintf("product%d", p), in, 0)
	}
	c.SetSynced("dc1", true)
	h := NewHandler(c, HandlerOptions{Config: cfg, LocalZone: "dc1"})
	var pkts [][]byte
	for j := range jobs {
		for p := range products {
			for _, t := range []uint16{mdns.TypeSRV, mdns.TypeA} {
				r := new(mdns.Msg)
				r.SetQuestion(fmt.Sprintf("http.job%d.prod.product%d.dc1.srv.glimpse.io.", j, p), t)
				r.SetEdns0(1232, false)
				pkt, err := r.Pack()
				if err != nil {
					b.Fatal(err)
				}
				pkts = append(pkts, pkt)
			}
		}
	}
	// A writer of a batch, as the UDP reader gives: the answer is made
	// in the batch's send buffer; with and without the reader's cache of
	// addresses.
	for _, hot := range []bool{false, true} {
		b.Run(map[bool]string{false: "maps", true: "hot"}[hot], func(b *testing.B) {
			w := &udpWriter{batch: &udpBatch{at: time.Now()}}
			if hot {
				w.batch.hot = newHotAnswers()
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if !h.ServeRaw(pkts[i], w) {
					b.Fatal("not answered on the fast path")
				}
				i++
				if i == len(pkts) {
					i = 0
				}
			}
		})
	}
}
