package dns

import (
	"net"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"

	"glimpse/cache"
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

func benchCache(b *testing.B) (*cache.Cache, Config) {
	cfg := Config{Domain: "srv.glimpse.io.", TTL: 5, NegativeTTL: 5}
	c := cache.New(NewBuilder(cfg))
	c.AddZone("dc1", true)
	var in []cache.Instance
	for i := 0; i < 4; i++ {
		in = append(in, cache.Instance{Node: "node" + string(rune('a'+i)), Address: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}),
			Port: 8000, Env: "prod", Job: "stream", Service: "http"})
	}
	c.SetProduct("dc1", "goku", in, 0)
	c.SetSynced("dc1")
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
