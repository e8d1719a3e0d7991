package resolve

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// redisTier is the fleet's shared tier. A Redis failure is a miss, never
// an error: it is logged once per outage and counted by health. A value
// that is not a valid envelope (see envelope.go) is a miss too, reported
// to reject, never an outage.
type redisTier struct {
	rdb     redis.UniversalClient
	health  *health
	now     func() time.Time
	macKey  []byte // the fleet's --cache-key; nil for none
	maxBody int    // the largest body a value may hold
	reject  func(key string, r *rejection)
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
	var get *redis.StringCmd
	var ttl *redis.DurationCmd
	_, err := t.rdb.Pipelined(op, func(p redis.Pipeliner) error {
		get, ttl = t.read(op, p, key)
		return nil
	})
	if err != nil && !isReply(err) {
		t.health.failed(ctx, "get", err)
		return entry{}, false
	}
	t.health.ok()
	return t.decode(key, get, ttl)
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
func (t *redisTier) read(ctx context.Context, p redis.Pipeliner, key string) (*redis.StringCmd, *redis.DurationCmd) {
	return p.GetRange(ctx, key, 0, int64(t.maxValue())), p.PTTL(ctx, key)
}

// maxValue is the size of the largest envelope a valid value can be.
func (t *redisTier) maxValue() int { return envelopeHeader + t.maxBody + macSize }

// decode turns what read queued into an entry. A key that does not exist
// is a plain miss; one whose value is refused is a miss reported to
// reject.
func (t *redisTier) decode(key string, get *redis.StringCmd, ttl *redis.DurationCmd) (entry, bool) {
	if err := get.Err(); err != nil {
		if redis.HasErrorPrefix(err, "WRONGTYPE") {
			t.reject(key, &rejection{rejectWrongType, "the key holds another type than a string"})
		}
		return entry{}, false
	}
	left := ttl.Val()
	if ttl.Err() != nil || left == -2 { // go-redis passes PTTL's -2 and -1 through as nanoseconds
		return entry{}, false // no such key (PTTL -2)
	}
	value := []byte(get.Val())
	if len(value) > t.maxValue() {
		t.reject(key, &rejection{rejectTooLarge, fmt.Sprintf("over %d bytes", t.maxValue())})
		return entry{}, false
	}
	if left <= 0 {
		// No expiry (-1) would break the TTL promise: regcap never
		// writes such a value.
		t.reject(key, &rejection{rejectNoTTL, "the key has no expiry"})
		return entry{}, false
	}
	o, err := openValue(key, value, t.macKey, t.maxBody)
	if err != nil {
		var r *rejection
		if errors.As(err, &r) {
			t.reject(key, r)
		}
		return entry{}, false
	}
	expires := t.now().Add(left)
	return entry{body: o.body, fetched: o.fetched, fresh: expires.Add(-o.staleFor), expires: expires, negative: o.negative}, true
}

// Set stores e until it expires.
func (t *redisTier) Set(ctx context.Context, key string, e entry) {
	left := e.expires.Sub(t.now())
	if left < time.Millisecond || t.health.skip() {
		return
	}
	op, cancel := t.health.op(ctx)
	defer cancel()
	if err := t.rdb.Set(op, key, sealEntry(key, e, t.macKey), left).Err(); err != nil {
		t.health.failed(ctx, "set", err)
		return
	}
	t.health.ok()
}

// backoffPrefix marks keys whose fetch failed and that the fleet answers
// stale for a while (see WithStaleIfError).
const backoffPrefix = "regcap:backoff:"

// SetBackoff marks key as backing off for d, fleet-wide.
func (t *redisTier) SetBackoff(ctx context.Context, key string, d time.Duration) {
	if d < time.Millisecond || t.health.skip() {
		return
	}
	op, cancel := t.health.op(ctx)
	defer cancel()
	if err := t.rdb.Set(op, backoffPrefix+key, "1", d).Err(); err != nil {
		t.health.failed(ctx, "backoff", err)
		return
	}
	t.health.ok()
}

// BackingOff reports whether some worker marked any of keys as backing
// off, in one round trip (one EXISTS per key, so that each is a
// single-key command).
func (t *redisTier) BackingOff(ctx context.Context, keys ...string) bool {
	if t.health.skip() {
		return false
	}
	op, cancel := t.health.op(ctx)
	defer cancel()
	cmds, err := t.rdb.Pipelined(op, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Exists(op, backoffPrefix+k)
		}
		return nil
	})
	if err != nil {
		t.health.failed(ctx, "backoff", err)
		return false
	}
	t.health.ok()
	for _, c := range cmds {
		if c.(*redis.IntCmd).Val() > 0 {
			return true
		}
	}
	return false
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

// Redis deployment shapes, for NewRedisClient.
const (
	RedisAuto     = ""         // sentinel with master_name, cluster with addr parameters, else single
	RedisSingle   = "single"   // redis:// or rediss://, one node
	RedisSentinel = "sentinel" // go-redis's failover URL: ?master_name=…&addr=…
	RedisCluster  = "cluster"  // go-redis's cluster URL: several seed addresses (?addr=…)
)

// NewRedisClient returns a Redis client, of the shape mode names (or, for
// RedisAuto, the URL's: a master_name parameter means Sentinel, addr
// parameters a Cluster), tuned for a cache in the request path: short
// timeouts and a single dial attempt, so that an outage costs a request
// one refused dial, not go-redis's default five with back-off. Commands
// respect their context's deadline (the per-command timeout, a request's
// wait), which go-redis ignores by default. go-redis reconnects, and
// follows failovers and slot moves, by itself.
func NewRedisClient(url, mode string) (redis.UniversalClient, error) {
	if mode == RedisAuto {
		q := ""
		if i := strings.IndexByte(url, '?'); i >= 0 {
			q = url[i+1:]
		}
		switch {
		case strings.Contains(q, "master_name="):
			mode = RedisSentinel
		case strings.Contains(q, "addr="):
			mode = RedisCluster
		default:
			mode = RedisSingle
		}
	}
	// Timeouts given in the URL (dial_timeout=…) are kept.
	const timeout = 500 * time.Millisecond
	tune := func(dial, read, write *time.Duration) {
		for _, d := range []*time.Duration{dial, read, write} {
			if *d == 0 {
				*d = timeout
			}
		}
	}
	switch mode {
	case RedisSingle:
		o, err := redis.ParseURL(url)
		if err != nil {
			return nil, err
		}
		o.ContextTimeoutEnabled = true
		tune(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout)
		o.DialerRetries = 1
		o.MaxRetries = 1 // one retry covers a pooled connection cut by a Redis restart
		return redis.NewClient(o), nil
	case RedisSentinel:
		o, err := redis.ParseFailoverURL(url)
		if err != nil {
			return nil, err
		}
		switch {
		case o.MasterName == "":
			return nil, errors.New("redis sentinel URL: no master_name parameter")
		case o.RouteByLatency || o.RouteRandomly || o.ReplicaOnly:
			// go-redis panics on the first two; regcap writes, so it needs
			// the master.
			return nil, errors.New("redis sentinel URL: route_by_latency, route_randomly and replica_only send commands to replicas, and regcap writes: drop them")
		}
		o.ContextTimeoutEnabled = true
		tune(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout)
		o.DialerRetries = 1
		o.MaxRetries = 1
		return redis.NewFailoverClient(o), nil
	case RedisCluster:
		o, err := redis.ParseClusterURL(url)
		if err != nil {
			return nil, err
		}
		o.ContextTimeoutEnabled = true
		tune(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout)
		o.DialerRetries = 1
		o.MaxRetries = 1
		// go-redis learns of a promoted replica from a MOVED reply, which
		// it only asks another node for on a command's third attempt: a
		// command bounded by the tier's timeout never gets there, and
		// would dial the dead master until the next periodic reload (60 s
		// by default). Reloading the slot map every second (one CLUSTER
		// SLOTS, in the background, only while commands are sent) ends an
		// outage a second after the cluster has failed over.
		if o.ClusterStateReloadInterval == 0 {
			o.ClusterStateReloadInterval = time.Second
		}
		return redis.NewClusterClient(o), nil
	}
	return nil, fmt.Errorf("redis mode %q: want single, sentinel or cluster", mode)
}
