package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

// The saturating load generator. dnsperf sends and receives one datagram
// per system call, and on one CPU it tops out near what a fast server on
// the other CPU answers: against it, the echo that does no DNS work reaches
// the rate of NSD, Knot DNS and glimpse, so the rate is dnsperf's, not the
// server's. blast sends and receives in batches (sendmmsg/recvmmsg) over
// connected sockets, each keeping a window of queries outstanding, so that
// on the same CPU it drives more than one server CPU answers. Whether it
// did is checked, not assumed: the harness reads how busy the server was.

// blastResult is what one blast run prints, as JSON.
type blastResult struct {
	Sent      int64   `json:"sent"`
	Completed int64   `json:"completed"`
	Lost      int64   `json:"lost"` // no answer within the timeout
	Late      int64   `json:"late"` // answers to queries already counted lost
	Bad       int64   `json:"bad"`  // not a NOERROR response with answers to an outstanding query
	FirstBad  string  `json:"first_bad,omitempty"`
	QPS       float64 `json:"qps"`
	AvgMs     float64 `json:"avg_ms"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
}

// blastBatch is the most datagrams one system call sends or receives.
const blastBatch = 64

// Latencies are counted in buckets of 1 µs up to 10 ms and of 100 µs
// above, up to the timeout, which a lost query counts as.
const (
	fineBuckets   = 10_000
	coarseBuckets = 100_000
)

type latencies [fineBuckets + coarseBuckets]int64

func (l *latencies) add(d time.Duration) {
	us := int(d / time.Microsecond)
	if us >= fineBuckets {
		us = fineBuckets + min((us-fineBuckets)/100, coarseBuckets-1)
	}
	l[us]++
}

// quantile returns the latency below which q of the counted ones fall, in
// ms (the upper edge of its bucket).
func (l *latencies) quantile(q float64) float64 {
	var total int64
	for _, n := range l {
		total += n
	}
	if total == 0 {
		return -1
	}
	want := int64(q*float64(total) + 0.5)
	var seen int64
	for i, n := range l {
		if seen += n; seen >= max(want, 1) {
			if i < fineBuckets {
				return float64(i+1) / 1000
			}
			return float64(fineBuckets+(i-fineBuckets+1)*100) / 1000
		}
	}
	return -1
}

func blastMain(args []string) error { return blast(args, os.Stdout) }

// blast runs the load generator with args and writes its blastResult to
// out.
func blast(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("blast", flag.ContinueOnError)
	addr := fs.String("addr", "", "server UDP address")
	file := fs.String("queries", "", "query file: one \"name TYPE\" per line, as dnsperf reads")
	d := fs.Duration("duration", 10*time.Second, "length of the run")
	rate := fs.Int("rate", 0, "queries per second in all (0: as fast as the server answers)")
	sockets := fs.Int("sockets", 16, "client sockets")
	window := fs.Int("window", 16, "queries outstanding per socket, at most")
	timeout := fs.Duration("timeout", timeoutSeconds*time.Second, "a query with no answer after this is lost")
	anyAnswer := fs.Bool("any-answer", false, "take any response with the query's ID (for the echo, which sends the query back)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *file == "" || *sockets < 1 || *window < 1 || *window > blastBatch || *d <= 0 || *rate < 0 || *timeout <= 0 {
		return fmt.Errorf("-addr and -queries are required; -sockets ≥1, -window 1..%d, -duration and -timeout > 0, -rate ≥ 0", blastBatch)
	}
	queries, err := packQueries(*file)
	if err != nil {
		return err
	}
	raddr, err := net.ResolveUDPAddr("udp", *addr)
	if err != nil {
		return err
	}
	var res blastResult
	var firstBad atomic.Value
	blasters := make([]*blaster, *sockets)
	start := time.Now()
	for i := range blasters {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			return err
		}
		defer c.Close()
		blasters[i] = &blaster{conn: ipv4.NewPacketConn(c), raw: c, queries: queries, next: i * len(queries) / *sockets,
			window: *window, timeout: *timeout, anyAnswer: *anyAnswer, start: start, end: start.Add(*d),
			rate: float64(*rate) / float64(*sockets), phase: float64(i) / float64(*sockets), firstBad: &firstBad, lat: new(latencies)}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(blasters))
	for i, w := range blasters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.run()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	all := new(latencies)
	var sum time.Duration
	for _, w := range blasters {
		res.Sent += w.sent
		res.Completed += w.completed
		res.Lost += w.lost
		res.Late += w.late
		res.Bad += w.bad
		sum += w.latSum
		for i, n := range w.lat {
			all[i] += n
		}
	}
	res.QPS = float64(res.Completed) / d.Seconds()
	if res.Completed > 0 {
		res.AvgMs = float64(sum.Microseconds()) / float64(res.Completed) / 1000
	}
	res.P50Ms, res.P99Ms = all.quantile(0.50), all.quantile(0.99)
	if s, ok := firstBad.Load().(string); ok {
		res.FirstBad = s
	}
	return json.NewEncoder(out).Encode(res)
}

// packQueries reads a dnsperf query file and packs each query with EDNS
// (4096 bytes), as dnsperf -e does.
func packQueries(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		name, typ, ok := strings.Cut(line, " ")
		qt, known := mdns.StringToType[strings.TrimSpace(typ)]
		if !ok || !known {
			return nil, fmt.Errorf("%s: %q is not \"name TYPE\"", path, line)
		}
		m := new(mdns.Msg)
		m.SetQuestion(mdns.Fqdn(name), qt)
		m.SetEdns0(4096, false)
		wire, err := m.Pack()
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", path, line, err)
		}
		out = append(out, wire)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no queries", path)
	}
	return out, nil
}

// blaster is one client socket. It keeps up to window queries outstanding
// and, with a rate, sends each query at its time; IDs go up by one, so the
// queries outstanding lie between oldest and id.
type blaster struct {
	conn       *ipv4.PacketConn
	raw        *net.UDPConn
	queries    [][]byte
	next       int
	window     int
	timeout    time.Duration
	anyAnswer  bool
	start, end time.Time
	rate       float64 // queries per second of this socket; 0: no limit
	phase      float64 // where in the rate's interval this socket sends, 0..1
	firstBad   *atomic.Value

	id, oldest uint16
	sentAt     [65536]int64 // ns since start; 0: not outstanding
	expired    [65536]bool  // counted lost; an answer now is late
	inFlight   int

	sent, completed, lost, late, bad int64
	latSum                           time.Duration
	lat                              *latencies
}

func (w *blaster) run() error {
	send := make([]ipv4.Message, blastBatch)
	for i := range send {
		send[i].Buffers = [][]byte{make([]byte, 512)}
	}
	recv := make([]ipv4.Message, blastBatch)
	for i := range recv {
		recv[i].Buffers = [][]byte{make([]byte, 4096)}
	}
	var deadline time.Time
	for {
		now := time.Since(w.start)
		if now >= w.end.Sub(w.start) {
			// What is still outstanding at the end is neither answered
			// nor lost: the run is over.
			return nil
		}
		w.expire(now)
		n := w.window - w.inFlight
		if w.rate > 0 {
			n = min(n, int(now.Seconds()*w.rate-w.phase)+1-int(w.sent))
		}
		if n > 0 {
			if err := w.send(send[:n], now); err != nil {
				return err
			}
		}
		// Wait for answers until the next query is due, the oldest one
		// times out, or the run ends.
		wake := w.end
		if w.rate > 0 && w.inFlight < w.window {
			wake = w.start.Add(time.Duration((float64(w.sent) + w.phase) / w.rate * float64(time.Second)))
		} else if w.inFlight > 0 {
			wake = w.start.Add(time.Duration(w.sentAt[w.oldest]) + w.timeout)
		}
		if wake.After(w.end) {
			wake = w.end
		}
		// A deadline is a runtime timer; move it only when it must come
		// sooner or has passed.
		if wake.Before(deadline) || !time.Now().Before(deadline) {
			deadline = wake
			if err := w.raw.SetReadDeadline(deadline); err != nil {
				return err
			}
		}
		k, err := w.conn.ReadBatch(recv, 0)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		w.answers(recv[:k], time.Since(w.start))
	}
}

// send sends len(msgs) queries, the next ones of the file in turn.
func (w *blaster) send(msgs []ipv4.Message, now time.Duration) error {
	for i := range msgs {
		q := w.queries[w.next]
		if w.next++; w.next == len(w.queries) {
			w.next = 0
		}
		b := msgs[i].Buffers[0][:len(q)]
		copy(b, q)
		w.id++
		b[0], b[1] = byte(w.id>>8), byte(w.id)
		msgs[i].Buffers[0] = b
		if w.sentAt[w.id] != 0 {
			// The IDs came round while this one waited: at 65,536
			// queries within the timeout, the socket cannot tell its
			// answer from the new one's, so it is lost.
			w.loseQuery(w.id)
		}
		w.sentAt[w.id] = int64(now) | 1 // never 0
		w.expired[w.id] = false
	}
	for off := 0; off < len(msgs); {
		k, err := w.conn.WriteBatch(msgs[off:], 0)
		if err != nil {
			return fmt.Errorf("send: %w", err)
		}
		off += k
	}
	for i := range msgs {
		msgs[i].Buffers[0] = msgs[i].Buffers[0][:cap(msgs[i].Buffers[0])]
	}
	w.sent += int64(len(msgs))
	w.inFlight += len(msgs)
	return nil
}

// expire counts the queries outstanding longer than the timeout as lost,
// at the timeout's latency, as dnsperf's figures here count them.
func (w *blaster) expire(now time.Duration) {
	for w.oldest != w.id+1 {
		at := w.sentAt[w.oldest]
		if at != 0 && now-time.Duration(at) < w.timeout {
			return
		}
		if at != 0 {
			w.loseQuery(w.oldest)
		}
		w.oldest++
	}
}

// loseQuery counts query id lost, at the timeout's latency.
func (w *blaster) loseQuery(id uint16) {
	w.sentAt[id] = 0
	w.expired[id] = true
	w.inFlight--
	w.lost++
	w.lat.add(w.timeout)
}

func (w *blaster) answers(msgs []ipv4.Message, now time.Duration) {
	for _, m := range msgs {
		p := m.Buffers[0][:m.N]
		if len(p) < 12 {
			w.noteBad("a datagram shorter than a DNS header")
			continue
		}
		id := uint16(p[0])<<8 | uint16(p[1])
		at := w.sentAt[id]
		if at == 0 {
			if w.expired[id] {
				w.expired[id] = false
				w.late++
				continue
			}
			w.noteBad(fmt.Sprintf("an answer to no outstanding query (ID %d)", id))
			continue
		}
		w.sentAt[id] = 0
		w.inFlight--
		if p[2]&0x80 == 0 || p[3]&0x0f != 0 || (!w.anyAnswer && p[6]|p[7] == 0) {
			w.noteBad(fmt.Sprintf("%s: flags %02x%02x with %d answers", question(p), p[2], p[3], int(p[6])<<8|int(p[7])))
			continue
		}
		d := now - time.Duration(at&^1)
		w.completed++
		w.latSum += d
		w.lat.add(d)
	}
}

// question is the question of DNS message p, for an error message.
func question(p []byte) string {
	var m mdns.Msg
	if err := m.Unpack(p); err != nil || len(m.Question) == 0 {
		return "a response with no readable question"
	}
	q := m.Question[0]
	return fmt.Sprintf("%s %s %s", q.Name, mdns.TypeToString[q.Qtype], mdns.RcodeToString[m.Rcode])
}

func (w *blaster) noteBad(s string) {
	w.bad++
	w.firstBad.CompareAndSwap(nil, s)
}

// blastWindow is the queries blast keeps outstanding per socket: dnsperf's
// outstanding queries spread over its sockets, within a batch.
func (c *config) blastWindow() int { return min(blastBatch, max(1, c.outstanding/c.clients)) }

// blastGen is blast as a loadGen, run on the load generators' CPUs with
// dnsperf's sockets and outstanding queries.
func (b *bench) blastGen() loadGen {
	return loadGen{"blast", func(ctx context.Context, s system, d time.Duration, rate int, _ bool) (perfResult, error) {
		args := []string{"blast", "-addr", s.addr, "-queries", s.queries, "-duration", d.String(), "-rate", strconv.Itoa(rate),
			"-sockets", strconv.Itoa(b.cfg.clients), "-window", strconv.Itoa(b.cfg.blastWindow())}
		if s.name == "udp-echo" {
			args = append(args, "-any-answer")
		}
		bin, args := onCPUs(b.cfg.clientCPUs, b.cfg.selfBin, args)
		var stderr strings.Builder
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return perfResult{}, fmt.Errorf("blast: %v: %s", err, tailLines(stderr.String(), 5))
		}
		var br blastResult
		if err := json.Unmarshal(out, &br); err != nil {
			return perfResult{}, fmt.Errorf("blast output not understood: %q", out)
		}
		r := perfResult{sent: br.Sent, completed: br.Completed, lost: br.Lost, late: br.Late, qps: br.QPS,
			avgMs: br.AvgMs, maxMs: -1, p50Ms: br.P50Ms, p99Ms: br.P99Ms, rcodes: fmt.Sprintf("NOERROR %d", br.Completed)}
		// As with dnsperf, every answer must be a real one.
		if br.Bad > 0 {
			return r, fmt.Errorf("blast against %s: %d answers were not a NOERROR answer to a query outstanding; the first: %s", s.addr, br.Bad, br.FirstBad)
		}
		return r, nil
	}}
}
