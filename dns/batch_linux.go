//go:build linux

package dns

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchSize is how many datagrams one recvmmsg reads and one sendmmsg
// writes at most.
const batchSize = 32

// mmsghdr is struct mmsghdr of recvmmsg(2) and sendmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// udpBatch is the state of a socket's batched reading: the datagrams of
// one recvmmsg, the answers to send back with one sendmmsg, and how far the
// reader has got. One reader at a time owns it; a handler that detaches
// hands it to the next reader (see udpWriter.Detach).
//
// A system call per datagram each way was most of the agent's CPU per
// answer (bench/RESULTS.md): NSD and Knot DNS batch theirs, and so does
// this. Everything is allocated once: the steady state makes no garbage.
type udpBatch struct {
	u    *udpServer
	rc   syscall.RawConn
	msgs [batchSize]mmsghdr
	iovs [batchSize]unix.Iovec
	// names are the senders, as the kernel gave them: the answers go back
	// to these very bytes (an IPv6 scope included).
	names [batchSize]unix.RawSockaddrInet6
	bufs  [batchSize][maxUDPSize]byte
	w     [batchSize]*udpWriter
	// out[i] is the answer to datagram i when has[i].
	out   [batchSize][]byte
	has   [batchSize]bool
	smsgs [batchSize]mmsghdr
	siovs [batchSize]unix.Iovec
	// n datagrams were read, at at; the next to serve is next.
	n, next int
	at      time.Time
	// hot is the reader's cache of the addresses it answered.
	hot *hotAnswers
	// The system calls, made once: a func literal passed to RawConn
	// would be allocated at each call. Their arguments and results are
	// the fields after them.
	recvFn, sendFn func(fd uintptr) bool
	res            int
	errno          syscall.Errno
	sendFrom       int
	sendCount      int
}

// startReader starts the socket's reader: batched on a socket bound to one
// address, one datagram at a time on a wildcard one (which needs each
// datagram's destination address).
func (u *udpServer) startReader() {
	if u.wildcard {
		go u.read()
		return
	}
	rc, err := u.conn.SyscallConn()
	if err != nil {
		go u.read()
		return
	}
	b := &udpBatch{u: u, rc: rc, hot: newHotAnswers()}
	// The socket is non-blocking, so neither call ever waits: they are
	// made raw, without telling the scheduler of a system call. A
	// sendmmsg of a full batch takes 100 µs and more; made the usual way,
	// the runtime's monitor took the processor from the reader for that
	// long and woke a thread to look for other work, which found none and
	// slept again. In the bench's DNS section the kernel's part of the
	// CPU per answer was 4.1-5.2 µs that way, 4.0-4.5 µs made raw (NSD:
	// 4.3-4.5 µs). A signal restarts the call. The price: a raw call is
	// not preempted, so a stop of the world for the garbage collector
	// waits for a send to end, 100 µs or so.
	b.recvFn = func(fd uintptr) bool {
		return b.mmsg(fd, unix.SYS_RECVMMSG, &b.msgs[0], batchSize)
	}
	b.sendFn = func(fd uintptr) bool {
		return b.mmsg(fd, unix.SYS_SENDMMSG, &b.smsgs[b.sendFrom], b.sendCount)
	}
	// What stays the same from one read to the next is set once: each
	// datagram's buffer and the place for its sender.
	for i := range b.msgs {
		b.iovs[i] = unix.Iovec{Base: &b.bufs[i][0]}
		b.iovs[i].SetLen(maxUDPSize)
		b.msgs[i].hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&b.names[i])), Iov: &b.iovs[i]}
		b.msgs[i].hdr.SetIovlen(1)
	}
	for i := range b.w {
		b.w[i] = &udpWriter{conn: u.conn, u: u, batch: b, slot: i}
	}
	go u.readBatch(b)
}

// mmsg makes the system call trap, recvmmsg or sendmmsg, on n messages
// from msgs, and keeps its result in b.res and b.errno; it reports false
// when the socket is not ready (RawConn then waits for it).
func (b *udpBatch) mmsg(fd uintptr, trap uintptr, msgs *mmsghdr, n int) bool {
	for {
		r, _, e := unix.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(msgs)), uintptr(n), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		b.res, b.errno = int(r), e
		return true
	}
}

// readBatch is the reader of a socket bound to one address: it serves the
// datagrams of b still unserved, sends their answers, reads the next batch,
// and so on, until the reading ends or a handler detaches (the next reader
// then carries on with b).
func (u *udpServer) readBatch(b *udpBatch) {
	for {
		for b.next < b.n {
			i := b.next
			b.next++
			w := b.w[i]
			serveRaw(u.h, b.bufs[i][:b.msgs[i].len], w)
			if w.detached {
				u.inflight.Done() // another reader has taken over b
				return
			}
		}
		b.flush()
		b.n, b.next = 0, 0
		n, err := b.recv()
		if err != nil {
			if u.readFailed(err) {
				return
			}
			continue
		}
		b.n, b.at = n, time.Now()
	}
}

// handOver starts the next reader of b, whose datagram slot's handler has
// detached: the slot gets a writer of its own.
func (b *udpBatch) handOver(slot int) {
	b.w[slot] = &udpWriter{conn: b.u.conn, u: b.u, batch: b, slot: slot}
	go b.u.readBatch(b)
}

// recv reads up to batchSize datagrams, waiting for the first one.
func (b *udpBatch) recv() (int, error) {
	// The kernel wrote the last senders' lengths and flags over these.
	for i := range b.msgs {
		b.msgs[i].hdr.Namelen = unix.SizeofSockaddrInet6
		b.msgs[i].hdr.Flags = 0
	}
	b.res, b.errno = 0, 0
	err := b.rc.Read(b.recvFn)
	switch {
	case err != nil:
		return 0, err
	case b.errno != 0:
		return 0, b.errno
	}
	return b.res, nil
}

// sender returns the sender of datagram i.
func (b *udpBatch) sender(i int) netip.AddrPort { return addrPort(&b.names[i]) }

// put keeps the answer to datagram i for the batch's sendmmsg.
func (b *udpBatch) put(i int, p []byte) {
	b.out[i] = append(b.out[i][:0], p...)
	b.has[i] = len(p) > 0
}

// answerBuf returns the buffer the answer to w's datagram is sent from,
// for the caller to fill in place; nil when w is not part of a batch (or
// no longer: its handler detached).
func (w *udpWriter) answerBuf() *[]byte {
	if w.batch == nil {
		return nil
	}
	w.batch.has[w.slot] = true
	return &w.batch.out[w.slot]
}

// flush sends the answers kept, with as few sendmmsg calls as the socket
// takes. An answer the kernel refuses (too large for the path) is dropped,
// as a single send of it would have failed.
func (b *udpBatch) flush() {
	k := 0
	for i := 0; i < b.n; i++ {
		if !b.has[i] || len(b.out[i]) == 0 {
			b.has[i] = false
			continue
		}
		b.has[i] = false
		b.siovs[k] = unix.Iovec{Base: &b.out[i][0]}
		b.siovs[k].SetLen(len(b.out[i]))
		b.smsgs[k] = mmsghdr{hdr: unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&b.names[i])),
			Namelen: b.msgs[i].hdr.Namelen,
			Iov:     &b.siovs[k],
		}}
		b.smsgs[k].hdr.SetIovlen(1)
		k++
	}
	for sent := 0; sent < k; {
		b.sendFrom, b.sendCount = sent, k-sent
		b.res, b.errno = 0, 0
		err := b.rc.Write(b.sendFn)
		switch {
		case err != nil:
			return // the socket is closed
		case b.errno != 0:
			sent++ // the first one failed: drop it, send the rest
		default:
			sent += max(b.res, 1)
		}
	}
}

// addrPort converts a sender's address as the kernel gave it.
func addrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			a = a.WithZone(strconv.FormatUint(uint64(sa.Scope_id), 10))
		}
		return netip.AddrPortFrom(a, port)
	}
	return netip.AddrPort{}
}
