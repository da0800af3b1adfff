package dns

import (
	"net"
	"net/netip"
	"testing"

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
