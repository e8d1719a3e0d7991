package resolve

import (
	"context"
	"errors"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/rediscache"
)

// lockMargin is how much longer than a fetch the fleet lock is held: the
// store and the release after it.
const lockMargin = 2 * time.Second

// fetchAndStore asks the registry and keeps the answer in the memory
// tier. What is left for the fleet after an answer (storing it in Redis,
// telling the fleet lock's waiters, if this worker holds the lock) it
// returns as after, for the caller to run once its callers are answered:
// a reply does not wait on Redis, and the waiters, told only after the
// value is stored, still read it. A failure's notice is sent before. after is never nil. The caller holds a fetch
// slot; it is released here.
func (r *Resolver) fetchAndStore(q query, held *rediscache.Lease) (body []byte, after func(), err error) {
	ctx, cancel := context.WithTimeout(q.traced(r.life), r.fetchTimeout)
	ctx, fs := r.startStep(ctx, "fetch")
	fetched := r.now()
	body, err = r.fetch.Fetch(ctx, q.req)
	fs.end(err)
	cancel()
	if err != nil {
		ce := contract.AsError(err)
		r.slots.release(q.registry, outcomeOf(ce.Code), ce.Code)
		if ce.Code == 404 && r.negativeTTL > 0 {
			// Cached fleet-wide: the waiters read it as they read an
			// answer, and answer the same 404.
			return nil, r.store(q, rediscache.Entry{Body: []byte(ce.Message), Fetched: fetched, Fresh: fetched.Add(r.negativeTTL),
				Expires: fetched.Add(r.negativeTTL), Negative: true}, held), ce
		}
		if r.staleIfError > 0 && staleWorthy(ce) {
			// Before the waiters hear of the failure: none of them, nor
			// any worker after them, tries again within the back-off.
			r.backOff(q, ce)
		}
		// A failure is not cached: the lock is released before the
		// reply, so that the next request fetches again rather than
		// wait on this failure's notice.
		switch {
		case held == nil:
		case ce.Code == 503:
			// This worker is stopping or overloaded, which says nothing
			// about the image: let the waiters try.
			held.Abandon(r.life)
		default:
			held.Fail(r.life, ce)
		}
		return nil, func() {}, ce
	}
	r.slots.release(q.registry, outcomeAnswer, 0)
	r.clearRegistryBackoff(q)
	fresh := fetched.Add(r.jittered(q.ttl))
	return body, r.store(q, rediscache.Entry{Body: body, Fetched: fetched, Fresh: fresh, Expires: fresh.Add(r.staleIfError)}, held), nil
}

// store keeps e in the memory tier now, and returns the storing of it in
// Redis and, if this worker holds the fleet lock, the telling of the
// waiters: the value and their notice in one round trip.
func (r *Resolver) store(q query, e rediscache.Entry, held *rediscache.Lease) func() {
	r.mem.Set(q.key, e)
	switch {
	case held != nil:
		return func() { held.Store(q.traced(r.life), e) }
	case r.shared != nil:
		return func() { r.shared.Set(q.traced(r.life), q.key, e) }
	}
	return func() {}
}

// negativeHit is the answer of a cached 404.
func (r *Resolver) negativeHit(e rediscache.Entry) error {
	r.onNegative()
	return &contract.Error{Code: 404, Message: string(e.Body)}
}

// acquireSlot takes a fetch slot for q's registry, waiting for one until
// ctx ends.
func (r *Resolver) acquireSlot(ctx context.Context, q query) (err error) {
	sctx, ss := r.startStep(ctx, "slot wait")
	defer func() { ss.end(err) }()
	b := r.slots.acquire(sctx, q.registry)
	switch {
	case b == nil:
		return nil
	case r.life.Err() != nil:
		return contract.Errorf(503, "%s: worker shutting down", q.image)
	case b.open:
		// The registry's own failure, as it last answered it: a caller
		// sees what the registry does, not that we stopped asking.
		return contract.Errorf(b.code, "%s: registry %s did not answer in time %d times in a row; not asked again for %s (circuit open)",
			q.image, q.registry, b.failures, b.retry.Round(time.Second))
	case errors.Is(context.Cause(ctx), errPushedOut):
		return contract.Errorf(503, "%s: worker's queue is full and %s holds more than its share of it; retry", q.image, q.registry)
	case b.registry:
		return contract.Errorf(503, "%s: all %d fetch slots for %s stayed busy (--concurrency-per-registry); retry", q.image, r.slots.per, q.registry)
	default:
		return contract.Errorf(503, "%s: all %d fetch slots stayed busy; retry", q.image, r.slots.size)
	}
}

// releaseSlot gives back a slot that fetched nothing.
func (r *Resolver) releaseSlot(q query) { r.slots.release(q.registry, outcomeNone, 0) }
