package main

import (
	"bufio"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/dns"
)

// ceiling is the DNS ceiling: the least a miekg/dns server can do per
// query. It runs on glimpse's own server code (dns.Listen: the same TCP
// listener and the same number of SO_REUSEPORT UDP sockets), and its
// handler answers every query with a fixed wire answer of the size glimpse
// gives for that query type: a copy with the query's ID patched in, no
// lookup, no name handling. Over UDP it answers from the raw packet, as
// glimpse does for its common queries (dns.RawHandler). glimpse can
// approach it but not pass it.
type ceiling struct {
	answers map[uint16][]byte // by query type; 0 for any other type
	// bufs holds the answer buffers, as glimpse's handler pools its own: a
	// buffer allocated per query would cost the ceiling garbage collection
	// that glimpse does not pay, and it would no longer be the least work.
	bufs sync.Pool
}

func (c *ceiling) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	qtype := uint16(0)
	if len(r.Question) == 1 {
		qtype = r.Question[0].Qtype
	}
	a, ok := c.answers[qtype]
	if !ok {
		a = c.answers[0]
	}
	c.write(w, a, byte(r.Id>>8), byte(r.Id))
}

var _ dns.RawHandler = (*ceiling)(nil)

// ServeRaw implements dns.RawHandler, as glimpse's handler does: the
// ceiling answers from the packet too, without unpacking it, so that it
// stays the least work on the same loop.
func (c *ceiling) ServeRaw(pkt []byte, w mdns.ResponseWriter) bool {
	off := 12
	for off < len(pkt) && pkt[off] != 0 {
		if pkt[off] > 63 {
			return false
		}
		off += 1 + int(pkt[off])
	}
	if off+3 > len(pkt) {
		return false
	}
	a, ok := c.answers[uint16(pkt[off+1])<<8|uint16(pkt[off+2])]
	if !ok {
		a = c.answers[0]
	}
	c.write(w, a, pkt[0], pkt[1])
	return true
}

// write sends answer a with the query's ID.
func (c *ceiling) write(w mdns.ResponseWriter, a []byte, id0, id1 byte) {
	bp, _ := c.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	buf := append((*bp)[:0], a...)
	buf[0], buf[1] = id0, id1
	w.Write(buf)
	*bp = buf
	c.bufs.Put(bp)
}

// ceilingMain runs the ceiling server until SIGTERM or SIGINT. The answers
// file holds lines "<qtype> <hex of a packed DNS message>"; the first line
// also answers query types not listed.
func ceilingMain(args []string) error {
	fs := flag.NewFlagSet("ceiling", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "UDP and TCP address")
	sockets := fs.Int("sockets", 1, "UDP sockets (SO_REUSEPORT)")
	file := fs.String("answers", "", "file of fixed answers")
	stock := fs.Bool("stock", false, "serve UDP with miekg/dns's own Server (a goroutine per query) instead of glimpse's UDP loop")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c := &ceiling{answers: map[uint16][]byte{}}
	f, err := os.Open(*file)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		typ, h, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		qt, known := mdns.StringToType[typ]
		wire, err := hex.DecodeString(h)
		if !known || err != nil || len(wire) < 12 {
			f.Close()
			return fmt.Errorf("answers file: bad line for %q", typ)
		}
		if len(c.answers) == 0 {
			c.answers[0] = wire
		}
		c.answers[qt] = wire
	}
	f.Close()
	if len(c.answers) == 0 {
		return fmt.Errorf("answers file %s: no answers", *file)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	errc := make(chan error, 1)
	if *stock {
		pc, err := dns.ListenUDP(*addr, *sockets)
		if err != nil {
			return err
		}
		for _, p := range pc {
			go func() { errc <- (&mdns.Server{PacketConn: p, Handler: c, UDPSize: 4096}).ActivateAndServe() }()
		}
		fmt.Println("stock miekg/dns ceiling listening on", *addr)
	} else {
		srv, err := dns.Listen(*addr, *sockets, 0, c)
		if err != nil {
			return err
		}
		defer srv.Close()
		go func() { errc <- srv.Serve() }()
		fmt.Println("ceiling listening on", srv.Addr())
	}
	select {
	case <-sig:
		return nil
	case err := <-errc:
		return err
	}
}

// echoMain runs the latency floor: UDP sockets that send each packet back
// with the response bit set, with no DNS work at all. What dnsperf measures
// against it is the cost of the machine, the kernel and dnsperf itself.
func echoMain(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "UDP address")
	sockets := fs.Int("sockets", 1, "UDP sockets (SO_REUSEPORT)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pcs, err := dns.ListenUDP(*addr, *sockets)
	if err != nil {
		return err
	}
	errc := make(chan error, len(pcs))
	for _, pc := range pcs {
		go func() {
			buf := make([]byte, 4096)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					errc <- err
					return
				}
				if n < 12 {
					continue
				}
				buf[2] |= 0x80
				pc.WriteTo(buf[:n], from)
			}
		}()
	}
	// dnsperf and waitDNS need an answer; TCP is not served.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	fmt.Println("echo listening on", *addr)
	select {
	case <-sig:
		return nil
	case err := <-errc:
		return err
	}
}
