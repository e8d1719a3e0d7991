package rediscache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Redis deployment shapes, for NewClient.
const (
	ModeAuto     = ""         // sentinel with master_name, cluster with addr parameters, else single
	ModeSingle   = "single"   // redis:// or rediss://, one node
	ModeSentinel = "sentinel" // go-redis's failover URL: ?master_name=…&addr=…
	ModeCluster  = "cluster"  // go-redis's cluster URL: several seed addresses (?addr=…)
)

// NewClient returns a Redis client, of the shape mode names (or, for
// ModeAuto, the URL's: a master_name parameter means Sentinel, addr
// parameters a Cluster), tuned for a cache in the request path: short
// timeouts and a single dial attempt, so that an outage costs a request
// one refused dial, not go-redis's default five with back-off. Commands
// respect their context's deadline (the per-command timeout, a request's
// wait), which go-redis ignores by default. go-redis reconnects, and
// follows failovers and slot moves, by itself.
func NewClient(url, mode string) (redis.UniversalClient, error) {
	if mode == ModeAuto {
		q := ""
		if i := strings.IndexByte(url, '?'); i >= 0 {
			q = url[i+1:]
		}
		switch {
		case strings.Contains(q, "master_name="):
			mode = ModeSentinel
		case strings.Contains(q, "addr="):
			mode = ModeCluster
		default:
			mode = ModeSingle
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
	case ModeSingle:
		o, err := redis.ParseURL(url)
		if err != nil {
			return nil, err
		}
		o.ContextTimeoutEnabled = true
		tune(&o.DialTimeout, &o.ReadTimeout, &o.WriteTimeout)
		o.DialerRetries = 1
		o.MaxRetries = 1 // one retry covers a pooled connection cut by a Redis restart
		return redis.NewClient(o), nil
	case ModeSentinel:
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
	case ModeCluster:
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

// Open connects a Cache to the Redis at url, of the shape mode names (see
// NewClient). The Cache owns the client: Close closes it too. go-redis's
// own log lines (a failed dial each) go to the Cache's logger at debug
// level: the Cache reports an outage once.
func Open(url, mode string, opts ...Option) (*Cache, error) {
	rdb, err := NewClient(url, mode)
	if err != nil {
		return nil, err
	}
	c := New(rdb, opts...)
	c.owned = true
	// go-redis has one logger for the process.
	redis.SetLogger(redisLog{c.log.Named("go-redis")})
	return c, nil
}

// Ping asks Redis once, for a start-up check, and loads the get-or-lock
// script (on every master of a Cluster), so that the first misses do not
// pay a NOSCRIPT round trip; the Cache works without it. The release
// script is loaded too, for the same reason.
func (c *Cache) Ping(ctx context.Context) error {
	ctx, cancel := c.health.op(ctx)
	defer cancel()
	if err := c.rdb.Ping(ctx).Err(); err != nil {
		return err
	}
	if err := getOrLockScript.Load(ctx, c.rdb).Err(); err != nil {
		return err
	}
	return releaseScript.Load(ctx, c.rdb).Err()
}

// redisLog sends go-redis's internal log lines to zap at debug level.
type redisLog struct{ log *zap.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}
