package rediscache

import "time"

// WithMaxTTL bounds freshness by the fetch time signed in each value,
// whatever expiry Redis reports for its key: a value is fresh until at
// most its fetch time + ttl, and served (stale) until at most that + its
// stale span; past that it is a miss. negative is the same bound for
// cached 404s (0: ttl). Give the longest TTL any worker of the fleet
// writes (with its jitter); 0, the default, trusts the key's expiry.
// With WithCacheKey, this is what keeps a Redis writer from replaying an
// old signed value with a long expiry as a fresh one.
func WithMaxTTL(ttl, negative time.Duration) Option {
	return func(c *Cache) { c.maxTTL, c.maxNegativeTTL = max(ttl, 0), max(negative, 0) }
}

// bound clamps e, read from Redis, to the freshness its signed fetch time
// allows (WithMaxTTL): the key's expiry is whatever the last writer set,
// which need not be a worker.
func (c *Cache) bound(e Entry, staleFor time.Duration) Entry {
	ttl := c.maxTTL
	if e.Negative && c.maxNegativeTTL > 0 {
		ttl = c.maxNegativeTTL
	}
	if ttl == 0 {
		return e
	}
	if fresh := e.Fetched.Add(ttl); fresh.Before(e.Fresh) {
		e.Fresh = fresh
	}
	if expires := e.Fetched.Add(ttl + staleFor); expires.Before(e.Expires) {
		e.Expires = expires
	}
	return e
}
