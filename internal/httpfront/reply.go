package httpfront

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/regcap/regcap/contract"
)

// A ProviderResponse is written as its items are ready: the head, each
// item in request order as soon as it and those before it are ready, the
// tail. So a reply is never held whole; what is held is the items ready
// but not yet written, within the byte budget (settleItem).
const (
	replyHead = `{"apiVersion":"` + gkAPIVersion + `","kind":"` + gkResponse + `","response":{"idempotent":true,"items":[`
	replyTail = "]}}\n"
)

// itemSize is the bytes an item takes in the reply, its comma included;
// value is the item's value or error string, as JSON.
func itemSize(key, value []byte) int {
	return len(`,{"key":,"value":}`) + len(key) + len(value)
}

// write streams the reply. An item still pending when ctx ends (the
// timeout) is a 504: started, its resolution goes on and fills the
// cache; never started, the batch's share was busy with the keys before
// it.
func (b *batch) write(ctx context.Context, w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, replyHead)
	for i := range b.items {
		it := &b.items[i]
		if e := it.entry; e != nil {
			select {
			case <-e.done:
			case <-ctx.Done():
			}
		}
		b.mu.Lock()
		if it.state == pending {
			b.settleItem(it, nil, b.timedOut(it.entry), "")
		}
		key, value, code, outcome := it.key, it.value, it.code, it.outcome
		it.value, it.state = nil, written
		b.mu.Unlock()

		if i > 0 {
			_, _ = io.WriteString(w, ",")
		}
		_, _ = io.WriteString(w, `{"key":`)
		_, _ = w.Write(key)
		if code != 0 {
			_, _ = io.WriteString(w, `,"error":`)
		} else {
			_, _ = io.WriteString(w, `,"value":`)
		}
		_, _ = w.Write(value)
		_, _ = io.WriteString(w, "}")
		b.h.observer.Request(b.fn, code, outcome, time.Since(b.began))
	}
	_, _ = io.WriteString(w, replyTail)
}

func (b *batch) timedOut(e *entry) *contract.Error {
	if e.started.Load() {
		return contract.Errorf(504, "not resolved within %s (--http-timeout); the fetch goes on and fills the cache, retry", b.h.timeout)
	}
	return contract.Errorf(504, "not started within %s (--http-timeout): this batch names %d images not in memory, resolved %d at a time (--http-batch-concurrency); retry",
		b.h.timeout, len(b.misses), b.h.batchShare)
}
