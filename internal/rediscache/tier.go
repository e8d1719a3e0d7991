package rediscache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Cache is the fleet's shared tier in Redis, with the fleet lock that
// lets one worker fetch a key while the others wait. A Redis failure is a
// miss, never an error: it is logged once per outage and counted. A write
// Redis refuses (out of memory, read-only) is counted and logged once per
// reason, and is no outage: reads go on (refusal.go). A value that is not
// a valid envelope (see envelope.go) is a miss too, counted and logged
// once per key, never an outage. Create it with New; Close it to stop the
// lock's listener.
type Cache struct {
	owned   bool // made by Open: Close closes rdb
	rdb     redis.UniversalClient
	health  *health
	log     *zap.Logger
	now     func() time.Time
	macKey  []byte // the fleet's --cache-key; nil for none
	maxBody int    // the largest body a value may hold
	reject  func(reason string)
	// onRefused counts writes Redis answered with an error.
	onRefused func(op, reason string)
	// maxTTL and maxNegativeTTL bound freshness by the signed fetch time
	// (WithMaxTTL); 0: by PTTL alone.
	maxTTL, maxNegativeTTL time.Duration
	rejects                *rejectLog  // keys whose refused value was logged
	logs                   *logLimiter // causes logged once in a while, not per request
	lock                   *fleetLock
}

// Option configures a Cache.
type Option func(*Cache)

// WithTimeout bounds each Redis command (default 1s), so that a sick
// Redis costs a request at most that much before it is served upstream.
func WithTimeout(d time.Duration) Option { return func(c *Cache) { c.health.opTimeout = d } }

// WithCacheKey signs every value with key (HMAC-SHA256) and accepts only
// values signed with it: anyone who can write to Redis but lacks the key
// cannot plant an answer. Every worker of a fleet needs the same key.
func WithCacheKey(key []byte) Option { return func(c *Cache) { c.macKey = key } }

// WithMaxBody bounds the body of a value read, in bytes (default 16 MiB):
// a larger value is refused unread.
func WithMaxBody(n int) Option { return func(c *Cache) { c.maxBody = n } }

// WithErrorHook is called with the operation name on every failed Redis
// command, for metrics.
func WithErrorHook(f func(op string)) Option { return func(c *Cache) { c.health.onError = f } }

// WithRejectHook is called with the reason whenever a value read from
// Redis is refused (short, checksum, signature, unsigned, version,
// too_large, wrong_type, no_ttl, expired), and whenever a fleet-lock
// notice is ignored (notice_too_large, notice_malformed, notice_unsigned,
// notice_signature, notice_code, notice_date), for metrics.
func WithRejectHook(f func(reason string)) Option { return func(c *Cache) { c.reject = f } }

// WithRefusedHook is called with the operation name (set, backoff, lock,
// unlock) and the reason (oom, readonly, misconf, noperm, other) on every
// write Redis answered with an error, for metrics. A refusal is not an
// outage, and is not passed to the error hook: Redis still answers, and
// its reads go on.
func WithRefusedHook(f func(op, reason string)) Option { return func(c *Cache) { c.onRefused = f } }

// WithLogger sets the logger.
func WithLogger(l *zap.Logger) Option { return func(c *Cache) { c.log = l } }

// WithClock sets the clock entries are dated by (default time.Now).
func WithClock(now func() time.Time) Option { return func(c *Cache) { c.now = now } }

// New returns a Cache over rdb. The caller keeps rdb and closes it after
// the Cache.
func New(rdb redis.UniversalClient, opts ...Option) *Cache {
	c := &Cache{
		rdb: rdb, log: zap.NewNop(), now: time.Now, maxBody: 16 << 20,
		reject: func(string) {}, onRefused: func(string, string) {},
		health: &health{onError: func(string) {}, opTimeout: time.Second},
	}
	for _, o := range opts {
		o(c)
	}
	c.health.log, c.health.now = c.log, c.now
	// A Cluster's outages are its shards': one dead master must not
	// stop the keys the others serve.
	c.health.cluster, _ = rdb.(*redis.ClusterClient)
	c.rejects, c.logs = newRejectLog(c.now), &logLimiter{now: c.now}
	c.lock = &fleetLock{c: c}
	return c
}

// Available reports whether Redis answered its last command; in a
// Cluster, whether any shard used since an outage began answers (a dead
// master stops only the keys in its slots).
func (c *Cache) Available() bool { return c.health.available() }

// Close stops the fleet lock's listener. Waiters still waiting run out
// their bound or see the lock go.
func (c *Cache) Close() {
	c.lock.close()
	if c.owned {
		_ = c.rdb.Close()
	}
}

// Get reads key and its remaining TTL in one round trip. The entry expires
// when the Redis key does, so a worker that reads an answer later than the
// worker that fetched it still stops serving it at fetch time + TTL; with
// WithMaxTTL, no later than the signed fetch time allows either.
func (c *Cache) Get(ctx context.Context, key string) (Entry, bool) {
	if len(key) > MaxKeyLen || c.health.skip(ctx, key) {
		return Entry{}, false
	}
	op, cancel := c.health.op(ctx)
	defer cancel()
	var get *redis.StringCmd
	var ttl *redis.DurationCmd
	_, err := c.rdb.Pipelined(op, func(p redis.Pipeliner) error {
		get, ttl = c.read(op, p, key)
		return nil
	})
	if err != nil && !isReply(err) {
		c.health.failed(ctx, key, "get", err)
		return Entry{}, false
	}
	c.health.ok(ctx, key)
	return c.decode(key, get, ttl)
}

// isReply reports whether err is an error reply from Redis about one
// command (WRONGTYPE, say), as opposed to Redis being unreachable.
func isReply(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// read queues the reading of key's value and remaining TTL on p. The
// value is read with GETRANGE, bounded by the largest valid envelope, so
// that an oversized value is never read whole; and a missing key is then
// an empty string, not a redis.Nil error, which would make go-redis close
// the pipeline's connection and dial (and handshake) a new one.
func (c *Cache) read(ctx context.Context, p redis.Pipeliner, key string) (*redis.StringCmd, *redis.DurationCmd) {
	return p.GetRange(ctx, key, 0, int64(c.maxValue())), p.PTTL(ctx, key)
}

// maxValue is the size of the largest envelope a valid value can be.
func (c *Cache) maxValue() int { return envelopeHeader + c.maxBody + macSize }

// decode turns what read queued into an entry. A key that does not exist
// is a plain miss; one whose value is refused is a miss reported to
// rejected.
func (c *Cache) decode(key string, get *redis.StringCmd, ttl *redis.DurationCmd) (Entry, bool) {
	if err := get.Err(); err != nil {
		if redis.HasErrorPrefix(err, "WRONGTYPE") {
			c.rejected(key, &rejection{rejectWrongType, "the key holds another type than a string"})
		}
		return Entry{}, false
	}
	if ttl.Err() != nil {
		return Entry{}, false
	}
	return c.decodeValue(key, get.Val(), ttl.Val())
}

// decodeValue turns a value read with its PTTL into an entry, refusing
// what decode refuses. left is PTTL's answer as go-redis passes it: -2
// and -1 as nanoseconds.
func (c *Cache) decodeValue(key, raw string, left time.Duration) (Entry, bool) {
	if left == -2 {
		return Entry{}, false // no such key (PTTL -2)
	}
	if len(raw) > c.maxValue() {
		c.rejected(key, &rejection{rejectTooLarge, fmt.Sprintf("over %d bytes", c.maxValue())})
		return Entry{}, false
	}
	if left <= 0 {
		// No expiry (-1) would break the TTL promise: regcap never
		// writes such a value.
		c.rejected(key, &rejection{rejectNoTTL, "the key has no expiry"})
		return Entry{}, false
	}
	// One copy: the entry's body is a slice of it.
	o, err := openValue(key, []byte(raw), c.macKey, c.maxBody)
	if err != nil {
		var r *rejection
		if errors.As(err, &r) {
			c.rejected(key, r)
		}
		return Entry{}, false
	}
	now := c.now()
	expires := now.Add(left)
	e := c.bound(Entry{Body: o.body, Fetched: o.fetched, Fresh: expires.Add(-o.staleFor), Expires: expires, Negative: o.negative}, o.staleFor)
	if !now.Before(e.Expires) {
		c.rejected(key, &rejection{rejectExpired, fmt.Sprintf("fetched %v ago, past its TTL and stale span, yet the key expires in %v", now.Sub(o.fetched).Round(time.Millisecond), left)})
		return Entry{}, false
	}
	return e, true
}

// rejected reports a value refused for key: counted every time, logged
// once per key (while it is remembered). The fetch that follows
// overwrites the value.
func (c *Cache) rejected(key string, why *rejection) {
	c.reject(why.reason)
	if !c.rejects.first(key) {
		return
	}
	c.log.Warn("refused a value read from redis: answering as a miss, the fetch overwrites it",
		zap.String("key", logKey(key)), zap.String("reason", why.reason), zap.String("detail", why.detail))
}

// Set stores e until it expires. A key over MaxKeyLen is not stored.
func (c *Cache) Set(ctx context.Context, key string, e Entry) {
	left := e.Expires.Sub(c.now())
	if left < time.Millisecond || len(key) > MaxKeyLen || c.health.skip(ctx, key) {
		return
	}
	op, cancel := c.health.op(ctx)
	defer cancel()
	c.settle(ctx, key, "set", c.rdb.Set(op, key, sealEntry(key, e, c.macKey), left).Err())
}

// backoffPrefix marks keys whose fetch failed and that the fleet answers
// stale for a while (the resolver's --stale-if-error).
const backoffPrefix = "regcap:backoff:"

// SetBackoff marks key as backing off for d, fleet-wide.
func (c *Cache) SetBackoff(ctx context.Context, key string, d time.Duration) {
	if d < time.Millisecond || len(key) > MaxKeyLen || c.health.skip(ctx, backoffPrefix+key) {
		return
	}
	op, cancel := c.health.op(ctx)
	defer cancel()
	c.settle(ctx, backoffPrefix+key, "backoff", c.rdb.Set(op, backoffPrefix+key, "1", d).Err())
}

// ClearBackoff ends key's back-off for the whole fleet: the registry
// answers again.
func (c *Cache) ClearBackoff(ctx context.Context, key string) {
	if len(key) > MaxKeyLen || c.health.skip(ctx, backoffPrefix+key) {
		return
	}
	op, cancel := c.health.op(ctx)
	defer cancel()
	c.settle(ctx, backoffPrefix+key, "backoff", c.rdb.Del(op, backoffPrefix+key).Err())
}

// BackingOff reports whether some worker marked any of keys as backing
// off, in one round trip (one EXISTS per key, so that each is a
// single-key command). In a Cluster, a key whose shard is down is left
// out, and each key's failure is its shard's.
func (c *Cache) BackingOff(ctx context.Context, keys ...string) bool {
	ask := keys
	if c.health.down.Load() != 0 {
		ask = make([]string, 0, len(keys))
		for _, k := range keys {
			if !c.health.skip(ctx, backoffPrefix+k) {
				ask = append(ask, k)
			}
		}
	}
	if len(ask) == 0 {
		return false
	}
	op, cancel := c.health.op(ctx)
	defer cancel()
	cmds, err := c.rdb.Pipelined(op, func(p redis.Pipeliner) error {
		for _, k := range ask {
			p.Exists(op, backoffPrefix+k)
		}
		return nil
	})
	if err != nil && !isReply(err) && c.health.cluster == nil {
		c.health.failed(ctx, "", "backoff", err)
		return false
	}
	found := false
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil && !isReply(err) {
			c.health.failed(ctx, backoffPrefix+ask[i], "backoff", err)
			continue
		}
		c.health.ok(ctx, backoffPrefix+ask[i])
		if cmd.(*redis.IntCmd).Val() > 0 { // 0 when it had an error reply
			found = true
		}
	}
	return found
}
