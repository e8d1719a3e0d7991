package resolve

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// redisTier is the fleet's shared tier. A Redis failure is a miss, never
// an error: it is logged once per outage and counted by health.
type redisTier struct {
	rdb    redis.UniversalClient
	health *health
	now    func() time.Time
}

// Get reads key and its remaining TTL in one round trip. The entry expires
// when the Redis key does, so a worker that reads an answer later than the
// worker that fetched it still stops serving it at fetch time + TTL.
func (t *redisTier) Get(ctx context.Context, key string) (entry, bool) {
	if t.health.skip() {
		return entry{}, false
	}
	op, cancel := t.health.op(ctx)
	defer cancel()
	var get *redis.SliceCmd
	var ttl *redis.DurationCmd
	_, err := t.rdb.Pipelined(op, func(p redis.Pipeliner) error {
		get, ttl = read(op, p, key)
		return nil
	})
	if err != nil {
		t.health.failed(ctx, "get", err)
		return entry{}, false
	}
	t.health.ok()
	return t.decode(get, ttl)
}

// read queues the reading of key's value and remaining TTL on p. The
// value is read with MGET, not GET: a missing key is then a nil element,
// not a redis.Nil error, which would make go-redis close the pipeline's
// connection and dial (and handshake) a new one for the next command.
func read(ctx context.Context, p redis.Pipeliner, key string) (*redis.SliceCmd, *redis.DurationCmd) {
	return p.MGet(ctx, key), p.PTTL(ctx, key)
}

// decode turns what read queued into an entry.
func (t *redisTier) decode(get *redis.SliceCmd, ttl *redis.DurationCmd) (entry, bool) {
	vals := get.Val()
	if len(vals) != 1 {
		return entry{}, false
	}
	s, ok := vals[0].(string)
	if !ok {
		return entry{}, false
	}
	body := []byte(s)
	left := ttl.Val()
	if left <= 0 {
		// No expiry (-1) would break the TTL promise; expired (-2) is gone.
		return entry{}, false
	}
	return entry{body: body, expires: t.now().Add(left)}, true
}

// Set stores e until it expires.
func (t *redisTier) Set(ctx context.Context, key string, e entry) {
	left := e.expires.Sub(t.now())
	if left < time.Millisecond || t.health.skip() {
		return
	}
	op, cancel := t.health.op(ctx)
	defer cancel()
	if err := t.rdb.Set(op, key, e.body, left).Err(); err != nil {
		t.health.failed(ctx, "set", err)
		return
	}
	t.health.ok()
}

// health tracks Redis outages for the tier and the fleet lock: one log
// line per outage, a counter per failed command, and during an outage one
// probe a second instead of a command timeout on every request.
type health struct {
	log       *zap.Logger
	onError   func(op string)
	opTimeout time.Duration
	now       func() time.Time

	down      atomic.Bool
	lastProbe atomic.Int64 // unix nanoseconds of the last command tried during an outage
}

// probeInterval is how often, during an outage, one command is let
// through to see whether Redis is back.
const probeInterval = time.Second

// op bounds one Redis command, so that a sick Redis costs a request at
// most opTimeout before it is served upstream.
func (h *health) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, h.opTimeout)
}

// available reports whether Redis answered its last command.
func (h *health) available() bool { return !h.down.Load() }

// skip reports whether to leave Redis alone. During an outage only one
// command a second goes to it, as a probe: a Redis that drops packets
// would otherwise cost every request its command timeouts.
func (h *health) skip() bool {
	if !h.down.Load() {
		return false
	}
	now := h.now().UnixNano()
	last := h.lastProbe.Load()
	if now-last < int64(probeInterval) {
		return true
	}
	return !h.lastProbe.CompareAndSwap(last, now)
}

// failed records a failed command. A command cut short by its caller's
// context (a request given up, a worker stopping) says nothing about
// Redis and is not counted as an outage.
func (h *health) failed(caller context.Context, op string, err error) {
	if caller.Err() != nil {
		return
	}
	h.onError(op)
	// The next probe is a second after this failure, not after the start
	// of the command that failed: a Redis that never answers takes longer
	// than that to time out, and would otherwise be probed by every
	// command.
	h.lastProbe.Store(h.now().UnixNano())
	if h.down.CompareAndSwap(false, true) {
		h.log.Warn("redis unavailable: answering from memory and registries until it is back",
			zap.String("op", op), zap.Error(err))
	}
}

func (h *health) ok() {
	if h.down.CompareAndSwap(true, false) {
		h.log.Info("redis available again: sharing the cache with the fleet")
	}
}

// NewRedisClient returns a Redis client tuned for a cache in the request
// path: short timeouts and a single dial attempt, so that an outage costs
// a request one refused dial, not go-redis's default five with back-off.
// Commands respect their context's deadline (the per-command timeout, a
// request's wait), which go-redis ignores by default. go-redis reconnects
// by itself once Redis is back.
func NewRedisClient(url string) (*redis.Client, error) {
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
