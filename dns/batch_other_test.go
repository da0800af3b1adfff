//go:build !linux

package dns

// batchedVisible says whether batchedServeRaw shows the answers of a
// batched reader: elsewhere than Linux there is no batch to show them.
const batchedVisible = false

func batchedServeRaw(h *Handler, b *udpBatch, pkt []byte) ([]byte, bool) {
	return nil, h.ServeRaw(pkt, &udpWriter{batch: b})
}
