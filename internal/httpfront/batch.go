package httpfront

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
)

// A batch is one Gatekeeper request being answered. Its keys are grouped
// by the cache entry they name, so that different spellings of one image
// (busybox, docker.io/library/busybox:latest, tags before one @sha256:)
// cost one resolution; each key keeps its own item. Memory hits are
// answered at once; the misses are resolved at most h.batchShare at a
// time, each holding a place in the front's budget until it ends.
type batch struct {
	h      *Handler
	fn     contract.Function
	pin    bool
	began  time.Time
	items  []item
	misses []*entry
	next   atomic.Int64 // the next miss to start

	mu       sync.Mutex // guards the items' state and reserved
	reserved int        // bytes of the reply written or ready to be
	over     []byte     // the 413 item error, the same for every key
}

// entry is one cache entry a batch asks for.
type entry struct {
	req     resolve.Request // as its first key spells it
	miss    *resolve.Miss
	items   []int // the items naming it, in request order
	started atomic.Bool
	done    chan struct{} // closed once its items are settled
}

type itemState uint8

const (
	pending itemState = iota // not settled
	ready                    // settled, waiting its turn to be written
	written
)

// item is one key's place in the reply. Once ready it holds what is
// written, and nothing else of the answer.
type item struct {
	name    string // the key as sent
	key     []byte // and as a JSON string
	entry   *entry // nil for a key that did not decode
	state   itemState
	value   []byte // JSON: the value, or with code the error string
	code    int    // 0, or the error's
	outcome contract.Outcome
}

func (h *Handler) newBatch(fn contract.Function, pin bool, keys []string, platform string, began time.Time) *batch {
	b := &batch{h: h, fn: fn, pin: pin, began: began, items: make([]item, len(keys))}
	b.reserved = len(replyHead) + len(replyTail)
	byKey := make(map[string]*entry, len(keys))
	var found []*entry
	for i, k := range keys {
		b.items[i].name, b.items[i].key = k, jsonString(k)
		payload, _ := json.Marshal(k)
		req := resolve.Request{Function: fn, Payload: payload, Platform: platform}
		ck, err := h.res.Key(req)
		if err != nil {
			b.settleItem(&b.items[i], nil, failure(err), "")
			continue
		}
		e := byKey[ck]
		if e == nil {
			e = &entry{req: req, done: make(chan struct{})}
			byKey[ck] = e
			found = append(found, e)
		}
		e.items = append(e.items, i)
		b.items[i].entry = e
	}
	for _, e := range found {
		a, miss, err := h.res.Lookup(e.req)
		if err != nil || miss == nil {
			b.settle(e, a, err)
			continue
		}
		e.miss = miss
		b.misses = append(b.misses, e)
	}
	return b
}

// start resolves the misses, h.batchShare at a time. The workers stop
// taking misses when ctx ends (the reply is due); those they started run
// on life, to their own end.
func (b *batch) start(ctx, life context.Context) {
	for range min(b.h.batchShare, len(b.misses)) {
		go b.work(ctx, life)
	}
}

func (b *batch) work(ctx, life context.Context) {
	for ctx.Err() == nil {
		i := int(b.next.Add(1)) - 1
		if i >= len(b.misses) {
			return
		}
		e := b.misses[i]
		if !b.h.inflight.take() {
			b.settle(e, resolve.Answer{}, b.h.overBudget())
			continue
		}
		e.started.Store(true)
		a, err := b.h.res.Resolve(life, e.miss)
		b.h.inflight.give()
		b.settle(e, a, err)
	}
}

// settle gives e's items their value or error, and wakes the writer.
// Items the writer already passed (at the timeout) are left alone.
func (b *batch) settle(e *entry, a resolve.Answer, err error) {
	defer close(e.done)
	var ce *contract.Error
	var val func(key string) []byte
	if err != nil {
		ce = failure(err)
	} else {
		val, ce = values(b.fn, b.pin, a.Body)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for n, i := range e.items {
		it := &b.items[i]
		if it.state != pending {
			continue
		}
		var v []byte
		if ce == nil {
			v = val(it.name)
		}
		outcome := a.Outcome
		if n > 0 && outcome == contract.Miss {
			outcome = contract.Shared // the first key's fetch
		}
		b.settleItem(it, v, ce, outcome)
	}
}

// settleItem makes it ready with v or ce, within the reply's byte budget:
// a value that would take the reply past it is a 413 instead. Errors are
// always kept: an error item is its key and one line of at most
// contract.MaxMessage bytes, so they add at most that per key to the
// budget, and a key never loses its real error to a large neighbour.
// Callers hold b.mu, or own b alone.
func (b *batch) settleItem(it *item, v []byte, ce *contract.Error, outcome contract.Outcome) {
	code := 0
	switch {
	case ce == nil && b.reserved+itemSize(it.key, v) > b.h.maxReply:
		if b.over == nil {
			b.over = jsonString(itemError(contract.Errorf(413, "reply over the %d-byte limit (--http-max-reply-bytes); ask for this key in a smaller batch", b.h.maxReply)))
		}
		v, code, outcome = b.over, 413, ""
	case ce != nil:
		v, code, outcome = jsonString(itemError(ce)), ce.Code, ""
	}
	it.value, it.code, it.outcome, it.state = v, code, outcome, ready
	b.reserved += itemSize(it.key, v)
}
