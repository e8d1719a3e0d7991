// Package resolve answers capability requests, whatever front they came
// through. It is the policy between the fronts and the tiers: a request
// is decoded, looked for in the memory tier, then in Redis; one
// resolution per key runs at a time in the worker (singleflight) and in
// the fleet (the fleet lock), within a bounded pool of fetch slots; what
// it fetched is stored in both tiers, refreshed ahead of expiry, and
// served stale while the registry fails. It knows nothing of NATS or
// HTTP (fronts turn their messages into a Request and its Answer into
// their replies), of Redis (package rediscache) or of registries
// (package handlers).
package resolve

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/telemetry"
)

// Request is a capability request as a front received it.
type Request struct {
	Function contract.Function
	// Payload is the waPC payload: a JSON string holding an image
	// reference.
	Payload []byte
	// Platform is the Regcap-Platform header, os/arch[/variant]; "" for
	// the resolver's default. Only oci_manifest_config reads it.
	Platform string
}

// Answer is a successful answer: the reply body, ready to send, and where
// it came from.
type Answer struct {
	Body    []byte
	Outcome contract.Outcome
	// Age is how long ago the answer was fetched, for stale answers.
	Age time.Duration
}

// Observer is told the outcome of every request a front answered, for
// metrics: code is 0 on success, outcome "" on error. Every front takes
// one.
type Observer interface {
	Request(fn contract.Function, code int, outcome contract.Outcome, elapsed time.Duration)
}

// The tiers and the fetch, as the resolver uses them.
type (
	memoryTier interface {
		Get(key string) (rediscache.Entry, bool)
		Set(key string, e rediscache.Entry)
	}
	// sharedTier is the fleet's tier and its lock (*rediscache.Cache).
	sharedTier interface {
		Get(ctx context.Context, key string) (rediscache.Entry, bool)
		Set(ctx context.Context, key string, e rediscache.Entry)
		// SetBackoff and BackingOff share, fleet-wide, that a key's
		// fetch failed and it is answered stale for a while.
		SetBackoff(ctx context.Context, key string, d time.Duration)
		ClearBackoff(ctx context.Context, key string)
		BackingOff(ctx context.Context, keys ...string) bool
		Lock(ctx context.Context, key string, hold time.Duration, newerThan time.Time) rediscache.Claim
		// GetOrLock reads key's value or takes its lock, in one round
		// trip.
		GetOrLock(ctx context.Context, key string, hold time.Duration) rediscache.Claim
		Available() bool
	}
	fetcher interface {
		Fetch(ctx context.Context, req handlers.Request) ([]byte, error)
	}
)

// Resolver is safe for concurrent use. Create it with New; Close it to
// cancel the fetches still running.
type Resolver struct {
	options
	fetch  fetcher
	mem    memoryTier
	shared sharedTier // nil without Redis

	// work counts the resolutions and refreshes running, so that Close
	// returns only once they are over (their lease released, their
	// Redis commands done); closed refuses new ones.
	workMu sync.Mutex
	work   sync.WaitGroup
	closed bool

	backoff     *otter.Cache[string, time.Time] // key → no fetch before, while serving it stale
	refreshHeld *otter.Cache[string, time.Time] // key → no refresh before (a refresh failed)
	refreshing  sync.Map                        // keys being refreshed by this worker
	decoded     *otter.Cache[string, query]     // raw request → decoded request
	slots       *slots                          // fetch slots
	flights     *flights                        // resolutions beyond the memory tier
	callers     atomic.Int64                    // requests waiting on them
	lockWaits   atomic.Int64                    // resolutions waiting on another worker's fetch

	life context.Context // ends at Close: fetches and waits are cancelled
	stop context.CancelFunc
	// noWait is a context already done: waiting on it takes only what
	// is free at once.
	noWait context.Context
}

// New returns a Resolver that fetches with f.
func New(f fetcher, opts ...Option) *Resolver {
	r := &Resolver{options: makeOptions(opts...), fetch: f}
	r.mem = rediscache.NewMemory(r.memoryBytes, r.now)
	if r.cache != nil {
		r.shared = r.cache
	}
	r.slots = newSlots(r.concurrency, r.perRegistry, r.now)
	r.flights = newFlights(int(r.maxPending))
	r.backoff = newDeadlines(r.now)
	r.refreshHeld = newDeadlines(r.now)
	r.decoded = otter.Must(&otter.Options[string, query]{
		MaximumWeight:    decodedSize,
		Weigher:          func(k string, q query) uint32 { return uint32(len(k) + 2*len(q.key) + 128) },
		ExpiryCalculator: otter.ExpiryWriting[string, query](decodedTTL),
	})
	r.life, r.stop = context.WithCancel(context.Background())
	var done context.CancelFunc
	r.noWait, done = context.WithCancel(context.Background())
	done()
	return r
}

// Close cancels the fetches and waits still running (their requests get
// 503). Answer after Close is 503.
func (r *Resolver) Close() {
	r.workMu.Lock()
	r.closed = true
	r.workMu.Unlock()
	r.stop()
	r.work.Wait()
}

// begin registers a resolution or refresh; false once closed.
func (r *Resolver) begin() bool {
	r.workMu.Lock()
	defer r.workMu.Unlock()
	if r.closed {
		return false
	}
	r.work.Add(1)
	return true
}

// Shared reports whether answers are shared with the fleet (Redis).
func (r *Resolver) Shared() bool { return r.shared != nil }

// RedisAvailable reports whether Redis answered its last command (true
// without Redis).
func (r *Resolver) RedisAvailable() bool { return r.shared == nil || r.shared.Available() }

// Pending is the number of requests beyond the memory tier: waiting on
// Redis, a fetch slot, or a fetch. Requests for one key wait on one
// resolution (see Resolutions).
func (r *Resolver) Pending() int { return int(r.callers.Load()) }

// LockWaits is the number of resolutions waiting now on another
// worker's fetch of their key (the fleet lock's holder), its answer to
// come through Redis.
func (r *Resolver) LockWaits() int { return int(r.lockWaits.Load()) }

// Resolutions is the number of resolutions beyond the memory tier, one
// per distinct key however many requests wait on it: what --max-pending
// bounds.
func (r *Resolver) Resolutions() int { return r.flights.count() }

// FetchPool reports the fetch pool now: the fetch slots in use, and the
// requests taken beyond the memory tier that hold none (waiting on
// Redis, a slot, or a fetch another request or worker is making).
// Metrics read it at scrape time.
func (r *Resolver) FetchPool() (inFlight, queued int) {
	inFlight = r.slots.inFlight()
	return inFlight, max(int(r.callers.Load())-inFlight, 0)
}

// Registries reports, per registry host with resolutions or fetch state,
// its resolutions pending (Queued, its share of --max-pending), its
// fetches in flight and their limit, and whether its circuit is open.
// Metrics read it at scrape time.
func (r *Resolver) Registries() map[string]RegistryState {
	out := r.slots.registries()
	for h, n := range r.flights.perRegistry() {
		s := out[h]
		s.Queued = n
		out[h] = s
	}
	return out
}

// Miss is a request the memory tier could not answer: Lookup returns it,
// decoded, and Resolve takes it on to Redis and the registry.
type Miss struct {
	// Request is the request as the front received it.
	Request Request
	q       query
}

// Answer answers req. Every error is a *contract.Error. ctx bounds only
// the caller's wait: the fetch it shares runs on the resolver's own
// context and deadline, so one caller giving up fails no other.
func (r *Resolver) Answer(ctx context.Context, req Request) (Answer, error) {
	a, miss, err := r.Lookup(req)
	if err != nil || miss == nil {
		return a, err
	}
	return r.Resolve(ctx, miss)
}

// Lookup answers req without blocking, for fronts that must not wait (a
// NATS callback): a request that does not decode gets its error, a memory
// hit its answer. Otherwise it returns the Miss that Resolve goes on with.
func (r *Resolver) Lookup(req Request) (Answer, *Miss, error) {
	q, err := r.decode(req)
	if err != nil {
		return Answer{}, nil, r.failed(req.Function, err)
	}
	if e, ok := r.mem.Get(q.key); ok && e.IsFresh(r.now()) {
		if e.Negative {
			return Answer{}, nil, r.failed(req.Function, r.negativeHit(e))
		}
		r.refreshIfDue(q, e)
		return Answer{Body: e.Body, Outcome: contract.Hit}, nil, nil
	}
	return Answer{}, &Miss{Request: req, q: q}, nil
}

// Resolve answers a request the memory tier missed: one resolution per
// key at a time in this worker, bounded by --max-pending.
func (r *Resolver) Resolve(ctx context.Context, m *Miss) (Answer, error) {
	a, err := r.join(ctx, m.q)
	if err != nil {
		return Answer{}, r.failed(m.Request.Function, err, telemetry.LogFields(ctx)...)
	}
	return a, nil
}

// join waits for q's one resolution in this worker, starting it if none
// runs. Only a new resolution takes a place of --max-pending.
func (r *Resolver) join(ctx context.Context, q query) (Answer, error) {
	if r.life.Err() != nil {
		return Answer{}, contract.Errorf(503, "%s: worker shutting down", q.image)
	}
	r.callers.Add(1)
	defer r.callers.Add(-1)
	f, leader := r.flights.join(r.life, q.key, q.registry)
	if f == nil {
		return Answer{}, contract.Errorf(503, "%s: worker over its queue limit (%d images pending); retry", q.image, r.maxPending)
	}
	if leader {
		if !r.begin() {
			r.flights.finish(f, resolved{}, contract.Errorf(503, "%s: worker shutting down", q.image))
		} else {
			// On the resolver's context rather than the caller's, so that
			// no caller's deadline fails the others.
			q = r.startResolution(ctx, q)
			go func() {
				defer r.work.Done()
				res, err := r.resolve(f, q)
				q.endResolution(res, err)
				if err != nil {
					// Errors are not cached: nobody joins this one
					// once it is answered.
					r.flights.retire(f)
				}
				r.flights.answer(f, res, err)
				// The callers are answered; what is left for the fleet
				// (storing in Redis, the lock's waiters) goes on here.
				if f.after != nil {
					f.after()
				}
				if err == nil {
					r.flights.retire(f)
				}
			}()
		}
	}
	// A resolution already answered, whose store is still under way:
	// its answer is in the memory tier too, and is a hit.
	answered := false
	if !leader {
		select {
		case <-f.done:
			answered = true
		default:
		}
	}
	select {
	case <-f.done:
		if f.err != nil {
			return Answer{}, f.err
		}
		s := f.res
		if !leader && s.outcome == contract.Miss {
			// Another request of this worker fetched it.
			s.outcome = contract.Shared
			if answered {
				s.outcome = contract.Hit
			}
		}
		return Answer{Body: s.body, Outcome: s.outcome, Age: s.age}, nil
	case <-ctx.Done():
		if r.life.Err() != nil || errors.Is(context.Cause(ctx), errShuttingDown) {
			return Answer{}, contract.Errorf(503, "%s: worker shutting down", q.image)
		}
		// The caller gave up; the fetch goes on and fills the cache.
		return Answer{}, contract.Errorf(504, "%s: not answered before the caller gave up; the fetch goes on", q.image)
	}
}

// lockedSlotWait is how long a miss that holds the fleet lock waits for a
// fetch slot before it gives the lock up: long enough for a burst's
// queue (fetches take milliseconds), short against the other workers'
// waits (--lock-wait).
func (r *Resolver) lockedSlotWait() time.Duration { return r.lockWait / 4 }

// errShuttingDown is the cause a front gives the context it cancels when
// it stops: its callers are answered 503, not 504.
var errShuttingDown = errors.New("worker shutting down")

// ShuttingDown returns a context that, cancelled, tells Answer its
// callers are cut short because the worker stops (503), not because they
// gave up (504).
func ShuttingDown() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	return ctx, func() { cancel(errShuttingDown) }
}

// resolved is what the one resolution of a key hands to every request
// that shared it.
type resolved struct {
	body    []byte
	outcome contract.Outcome
	age     time.Duration // for stale answers
}

// resolve is f's resolution of q. Waiting, for a slot or for another
// worker's fetch, is bounded by --lock-wait and ends if f is pushed out;
// the registry request is bounded by --fetch-timeout of its own: a 504
// always means the registry was slow, never that this worker was busy.
func (r *Resolver) resolve(f *flight, q query) (resolved, error) {
	hit := func(e rediscache.Entry, o contract.Outcome) (resolved, error) {
		if e.Negative {
			return resolved{}, r.negativeHit(e)
		}
		r.refreshIfDue(q, e)
		return resolved{body: e.Body, outcome: o}, nil
	}
	wait, cancel := context.WithTimeout(q.traced(f.ctx), r.lockWait)
	defer cancel()
	// The resolution that just finished may have filled the memory tier.
	// An entry past its TTL is no hit, but may answer a failed fetch.
	var stale *rediscache.Entry
	if e, ok := r.mem.Get(q.key); ok {
		if e.IsFresh(r.now()) {
			return hit(e, contract.Hit)
		}
		if !e.Negative {
			stale = &e
		}
	}
	// A slot free now is taken before the lock, so that the lock is held
	// only while fetching. Without one the lock is taken all the same,
	// and held while this worker waits for a slot, for a quarter of
	// --lock-wait at most: either way a miss makes one round trip before
	// its fetch (the get-or-lock script: the value, or the lock, or who
	// holds it), and a value another worker stored is answered without
	// waiting for a slot. A longer queue gives the lock up, and looks
	// again (a second round trip) once its slot came.
	busy := r.slots.acquire(r.noWait, q.registry)
	slot := busy == nil
	if slot {
		r.flights.fetching(f)
	}
	var c rediscache.Claim
	switch {
	case r.shared != nil && busy != nil && busy.open:
		// The registry's circuit is open: nothing to lock for, as
		// nothing will be fetched; a value in Redis still answers.
		if e, ok := r.shared.Get(wait, q.key); ok {
			r.mem.Set(q.key, e)
			if e.IsFresh(r.now()) {
				return hit(e, contract.Hit)
			}
			if !e.Negative && (stale == nil || e.Fetched.After(stale.Fetched)) {
				stale = &e
			}
		}
	case r.shared != nil:
		hold := r.fetchTimeout + lockMargin
		if !slot {
			hold += r.lockedSlotWait()
		}
		c = r.shared.GetOrLock(q.traced(r.life), q.key, hold)
		if c.Stale != nil {
			r.mem.Set(q.key, *c.Stale)
			if !c.Stale.Negative && (stale == nil || c.Stale.Fetched.After(stale.Fetched)) {
				stale = c.Stale
			}
		}
	}
	// Without a fresh answer or our own lock: while the registry keeps
	// failing, a key answered stale goes upstream once per TTL for the
	// fleet, not once per request.
	if c.Lease == nil && c.Found == nil && r.staleUsable(stale) && r.backingOff(wait, q) {
		if slot {
			r.releaseSlot(q)
		}
		if c.Waiter != nil {
			c.Waiter.Cancel()
		}
		return r.staleAnswer(*stale), nil
	}
	switch {
	case c.Found != nil:
		if slot {
			r.releaseSlot(q)
		}
		r.mem.Set(q.key, *c.Found)
		return hit(*c.Found, contract.Hit)
	case c.Waiter != nil:
		// Waiting is not fetching: give the slot to others meanwhile.
		if slot {
			r.releaseSlot(q)
			slot = false
		}
		lctx, ls := r.startStep(wait, "lock wait")
		r.lockWaits.Add(1)
		v := c.Waiter.Wait(lctx, r.lockWait)
		r.lockWaits.Add(-1)
		ls.end(nil)
		if v != nil {
			if v.Failure != nil {
				return r.orStale(v.Failure, stale)
			}
			r.mem.Set(q.key, v.Found)
			return hit(v.Found, contract.Shared)
		}
		// No answer in time, or the holder gave up or died: fetch here.
		// For the fleet this is a new miss, and it waits for a slot as
		// long as a new miss would: callers who waited for a dead holder
		// are not failed because every slot was busy at the instant
		// their wait ended.
		sctx, scancel := context.WithTimeout(q.traced(f.ctx), r.lockWait)
		err := r.acquireSlot(sctx, q)
		scancel()
		if err != nil {
			return r.orStale(err, stale)
		}
		slot = true
		r.flights.fetching(f)
	}
	if c.Lease != nil && r.staleUsable(stale) && r.backingOff(r.life, q) {
		// The holder before us failed and backed off between our look
		// and our lock: answer stale, and so do our waiters.
		if slot {
			r.releaseSlot(q)
		}
		c.Lease.Fail(r.life, contract.Errorf(503, "%s: registry failing, backing off", q.image))
		return r.staleAnswer(*stale), nil
	}
	if !slot {
		// Holding the lock, wait for a slot only briefly: the other
		// workers' waiters are bounded by --lock-wait from their own
		// start, and must not spend it on this worker's queue.
		sctx, scancel := wait, context.CancelFunc(func() {})
		if c.Lease != nil {
			sctx, scancel = context.WithTimeout(wait, r.lockedSlotWait())
		}
		err := r.acquireSlot(sctx, q)
		queued := err != nil && c.Lease != nil && wait.Err() == nil && errors.Is(sctx.Err(), context.DeadlineExceeded)
		scancel()
		if queued {
			// Our lock's waiters fetch themselves, with their own
			// workers' slots; we go on queueing without the lock, and
			// look again once a slot came.
			c.Lease.Abandon(r.life)
			c.Lease = nil
			if err = r.acquireSlot(wait, q); err == nil {
				relock := r.shared.Lock(q.traced(r.life), q.key, r.fetchTimeout+lockMargin, time.Time{})
				switch {
				case relock.Found != nil:
					r.releaseSlot(q)
					r.mem.Set(q.key, *relock.Found)
					return hit(*relock.Found, contract.Hit)
				case relock.Waiter != nil:
					// Another worker took it meanwhile; the slot is
					// ours now, and our callers have waited enough.
					relock.Waiter.Cancel()
				}
				c.Lease = relock.Lease
			}
		}
		if err != nil {
			// Our lock's waiters fetch themselves rather than wait out
			// our queue.
			if c.Lease != nil {
				c.Lease.Abandon(r.life)
			}
			return r.orStale(err, stale)
		}
		r.flights.fetching(f)
	}
	body, after, err := r.fetchAndStore(q, c.Lease)
	f.after = after
	if err != nil {
		return r.orStale(err, stale)
	}
	return resolved{body: body, outcome: contract.Miss}, nil
}
