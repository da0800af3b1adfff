//go:build !linux

package dns

import (
	"net/netip"
	"time"
)

// udpBatch is Linux's batched reading (recvmmsg and sendmmsg); elsewhere a
// socket is read one datagram at a time.
type udpBatch struct {
	at  time.Time
	hot *hotAnswers
}

func (u *udpServer) startReader() { go u.read() }

func (b *udpBatch) put(int, []byte) {}

func (b *udpBatch) sender(int) netip.AddrPort { return netip.AddrPort{} }

func (b *udpBatch) handOver(int) {}

func (w *udpWriter) answerBuf() *[]byte { return nil }
