// Package rediscache keeps regcap's answers: the cache entry and the
// self-checking envelope it is stored in, the in-process memory tier, the
// Redis tier shared by a fleet, the fleet lock and its notices, Redis
// health, and the Redis client constructor. It is the only package of the
// worker that speaks Redis; the resolver decides when each tier is asked.
package rediscache

import "time"

// Entry is a cached answer, fresh until one absolute moment and kept
// until another (later with --stale-if-error, to answer with while the
// registry fails). Every tier and every worker uses the same moments,
// counted from the fetch, so that no fresh answer is older than the TTL
// anywhere.
type Entry struct {
	Body    []byte
	Fetched time.Time // when the fetch that made it started
	Fresh   time.Time // served as a hit until then
	Expires time.Time // kept until then
	// Negative marks a cached 404 (--negative-ttl): Body is its message.
	Negative bool
}

// IsFresh reports whether e may be served as a hit at now.
func (e Entry) IsFresh(now time.Time) bool { return now.Before(e.Fresh) }
