package resolve

import (
	"context"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/regcap/regcap/internal/rediscache"
)

// jittered spreads ttl by ±ttlJitter, so that keys fetched together do
// not expire (and refresh) together.
func (r *Resolver) jittered(ttl time.Duration) time.Duration {
	if r.ttlJitter == 0 {
		return ttl
	}
	return time.Duration(float64(ttl) * (1 + r.ttlJitter*(2*rand.Float64()-1)))
}

// refreshIfDue starts one background refresh of q's key when e, a fresh
// hit, is in the last refreshAhead fraction of its TTL. Only keys that
// are asked for are refreshed; one refresh per key at a time per worker,
// and, through the fleet lock, per fleet.
func (r *Resolver) refreshIfDue(q query, e rediscache.Entry) {
	if r.refreshAhead == 0 {
		return
	}
	now := r.now()
	due := e.Fresh.Add(-time.Duration(r.refreshAhead * float64(e.Fresh.Sub(e.Fetched))))
	if now.Before(due) || r.life.Err() != nil {
		return
	}
	if until, held := r.refreshHeld.GetIfPresent(q.key); held && now.Before(until) {
		return
	}
	if _, busy := r.refreshing.LoadOrStore(q.key, struct{}{}); busy {
		return
	}
	if !r.begin() {
		r.refreshing.Delete(q.key)
		return
	}
	r.startRefresh(q, e)
}

// startRefresh runs refresh in the background. A function of its own, so
// that q and e escape to the heap only when a refresh starts, not on
// every hit that checks whether one is due.
func (r *Resolver) startRefresh(q query, e rediscache.Entry) {
	go func() {
		defer r.work.Done()
		defer r.refreshing.Delete(q.key)
		r.refresh(q, e)
	}()
}

// refresh fetches q's key again ahead of its expiry, unless the registry
// is failing (back-off), another worker already refreshed it or is
// refreshing it, or no slot frees up within the lock wait. A failed
// refresh backs off for a TTL: the entry stays served until it expires.
func (r *Resolver) refresh(q query, old rediscache.Entry) {
	wait, cancel := context.WithTimeout(r.life, r.lockWait)
	defer cancel()
	if r.backingOff(wait, q) || r.acquireSlot(wait, q) != nil {
		return
	}
	var c rediscache.Claim
	if r.shared != nil {
		c = r.shared.Lock(r.life, q.key, r.fetchTimeout+lockMargin, old.Fetched)
	}
	switch {
	case c.Found != nil:
		r.releaseSlot(q)
		r.mem.Set(q.key, *c.Found)
		return
	case c.Waiter != nil:
		r.releaseSlot(q)
		c.Waiter.Cancel()
		return
	}
	r.onRefresh()
	_, after, err := r.fetchAndStore(q, c.Lease)
	after() // nobody waits on a refresh's answer
	if err != nil {
		// Not again from this worker until the entry expires; the fleet
		// back-off (set by fetchAndStore for failures that deserve a
		// stale answer) is not this: a 404 here must show at expiry.
		r.refreshHeld.Set(q.key, old.Fresh)
		r.log.Info("refresh ahead of expiry failed: serving the entry until it expires", zap.String("image", q.image), zap.Error(err))
	}
}
