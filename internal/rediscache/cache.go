// Package rediscache is regcap's answer cache: a bounded in-memory tier in
// front of Redis, shared by every worker of a fleet. Both tiers expire an
// entry at the same absolute moment, counted from the fetch. Without Redis
// the memory tier is the whole cache.
package rediscache

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// DefaultMemorySize bounds the memory tier, in bytes.
const DefaultMemorySize = 64 << 20

// entryOverhead approximates what an entry costs beyond its key and body.
const entryOverhead = 96

type entry struct {
	body    []byte
	expires time.Time
}

// Cache is safe for concurrent use.
type Cache struct {
	mem       *otter.Cache[string, entry]
	rdb       redis.UniversalClient
	log       *zap.Logger
	opTimeout time.Duration
	now       func() time.Time
	onError   func(op string)

	redisDown atomic.Bool
	lastProbe atomic.Int64 // unix nanoseconds of the last command tried during an outage
	lock      lockState
}

// probeInterval is how often, during an outage, one command is let
// through to see whether Redis is back.
const probeInterval = time.Second

// Option configures a Cache.
type Option func(*Cache)

// WithRedis makes Redis the shared tier.
func WithRedis(rdb redis.UniversalClient) Option { return func(c *Cache) { c.rdb = rdb } }

// WithLogger sets the logger (default: none).
func WithLogger(l *zap.Logger) Option { return func(c *Cache) { c.log = l } }

// WithOpTimeout bounds each Redis command (default 1s), so that a sick
// Redis costs a request at most that much before it is served upstream.
func WithOpTimeout(d time.Duration) Option { return func(c *Cache) { c.opTimeout = d } }

// WithErrorHook is called with the operation name on every Redis error,
// for metrics.
func WithErrorHook(f func(op string)) Option { return func(c *Cache) { c.onError = f } }

// New returns a Cache whose memory tier holds at most memoryBytes. Zero
// disables the memory tier: every hit then goes to Redis (or, without
// Redis, nothing is cached).
func New(memoryBytes uint64, opts ...Option) *Cache {
	c := &Cache{log: zap.NewNop(), opTimeout: time.Second, now: time.Now, onError: func(string) {}}
	for _, o := range opts {
		o(c)
	}
	if memoryBytes == 0 {
		return c
	}
	c.mem = otter.Must(&otter.Options[string, entry]{
		MaximumWeight: memoryBytes,
		Weigher: func(k string, e entry) uint32 {
			return uint32(min(len(k)+len(e.body)+entryOverhead, 1<<31))
		},
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, entry]) time.Duration {
			return e.Value.expires.Sub(c.now())
		}),
	})
	return c
}

// Shared reports whether entries are shared with other workers (Redis).
func (c *Cache) Shared() bool { return c.rdb != nil }

// Redis returns the shared tier, nil without one.
func (c *Cache) Redis() redis.UniversalClient { return c.rdb }

// Local returns a live entry of the memory tier. It never blocks on the
// network, so it may run in a NATS callback.
func (c *Cache) Local(key string) ([]byte, bool) {
	if c.mem == nil {
		return nil, false
	}
	e, ok := c.mem.GetIfPresent(key)
	if !ok || !c.now().Before(e.expires) {
		return nil, false
	}
	return e.body, true
}

// Get looks in memory, then in Redis. A Redis failure is a miss: it is
// logged once per outage and counted, never returned.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, bool) {
	if b, ok := c.Local(key); ok {
		return b, true
	}
	if c.rdb == nil || c.skipRedis() {
		return nil, false
	}
	op, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	var get *redis.StringCmd
	var ttl *redis.DurationCmd
	_, err := c.rdb.Pipelined(op, func(p redis.Pipeliner) error {
		get = p.Get(op, key)
		ttl = p.PTTL(op, key)
		return nil
	})
	if errors.Is(err, redis.Nil) {
		c.redisOK()
		return nil, false
	}
	if err != nil {
		c.redisFailed(ctx, "get", err)
		return nil, false
	}
	c.redisOK()
	body, _ := get.Bytes()
	left := ttl.Val()
	if left <= 0 {
		// No expiry (-1) would break the TTL promise; expired (-2) is gone.
		return nil, false
	}
	c.setLocal(key, body, c.now().Add(left))
	return body, true
}

// Set stores body until expires in both tiers. Redis failures are absorbed
// like in Get.
func (c *Cache) Set(ctx context.Context, key string, body []byte, expires time.Time) {
	left := expires.Sub(c.now())
	if left < time.Millisecond {
		return
	}
	c.setLocal(key, body, expires)
	if c.rdb == nil || c.skipRedis() {
		return
	}
	op, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	if err := c.rdb.Set(op, key, body, left).Err(); err != nil {
		c.redisFailed(ctx, "set", err)
		return
	}
	c.redisOK()
}

// Forget drops key from the memory tier only.
func (c *Cache) Forget(key string) {
	if c.mem != nil {
		c.mem.Invalidate(key)
	}
}

func (c *Cache) setLocal(key string, body []byte, expires time.Time) {
	if c.mem == nil {
		return
	}
	c.mem.Set(key, entry{body: body, expires: expires})
}

// Available reports whether the shared tier answered its last command.
func (c *Cache) Available() bool { return c.rdb == nil || !c.redisDown.Load() }

// skipRedis reports whether to leave Redis alone. During an outage only
// one command a second goes to it, as a probe: a Redis that drops packets
// would otherwise cost every request its command timeouts.
func (c *Cache) skipRedis() bool {
	if !c.redisDown.Load() {
		return false
	}
	now := c.now().UnixNano()
	last := c.lastProbe.Load()
	if now-last < int64(probeInterval) {
		return true
	}
	return !c.lastProbe.CompareAndSwap(last, now)
}

// redisFailed records a failed command. A command cut short by its
// caller's context (a request given up, a worker stopping) says nothing
// about Redis and is not counted as an outage.
func (c *Cache) redisFailed(caller context.Context, op string, err error) {
	if caller.Err() != nil {
		return
	}
	c.onError(op)
	// The next probe is a second after this failure, not after the start
	// of the command that failed: a Redis that never answers takes longer
	// than that to time out, and would otherwise be probed by every
	// command.
	c.lastProbe.Store(c.now().UnixNano())
	if c.redisDown.CompareAndSwap(false, true) {
		c.log.Warn("redis unavailable: answering from memory and registries until it is back",
			zap.String("op", op), zap.Error(err))
	}
}

func (c *Cache) redisOK() {
	if c.redisDown.CompareAndSwap(true, false) {
		c.log.Info("redis available again: sharing the cache with the fleet")
	}
}

// NewClient returns a Redis client tuned for a cache in the request path:
// short timeouts and a single dial attempt, so that an outage costs a
// request one refused dial, not go-redis's default five with back-off.
// Commands respect their context's deadline (the cache's per-command
// timeout, a request's wait), which go-redis ignores by default.
// go-redis reconnects by itself once Redis is back.
func NewClient(url string) (*redis.Client, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, err
	}
	o.ContextTimeoutEnabled = true
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 500*time.Millisecond, 500*time.Millisecond, 500*time.Millisecond
	o.DialerRetries = 1
	o.MaxRetries = 1 // one retry covers a pooled connection cut by a Redis restart
	return redis.NewClient(o), nil
}
