package rediscache

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// health tracks Redis outages for the tier and the fleet lock: one log
// line per outage, a counter per failed command, and during an outage one
// probe a second instead of a command timeout on every request.
//
// In a Redis Cluster an outage is a shard's, not the whole of Redis's:
// health is kept per master address, the one serving the command's key,
// so that a dead master stops only the keys in its slots; the others are
// still read and shared through the fleet lock. Once the cluster has
// failed over, the slots' keys go to the promoted replica, a shard that
// is up, and the dead address is forgotten (see sweep).
type health struct {
	log       *zap.Logger
	onError   func(op string)
	opTimeout time.Duration
	now       func() time.Time

	// cluster is set for a Redis Cluster: health per shard.
	cluster *redis.ClusterClient
	// all is the whole of Redis outside a Cluster; in one, the commands
	// whose master cannot be named (the cluster's slot map cannot be
	// read): while it is down, every key waits for its probe.
	all shard
	// down counts the shards down, all included: 0, the usual case,
	// costs a command one atomic load and no slot lookup.
	down      atomic.Int32
	lastSweep atomic.Int64 // unix nanoseconds of the last sweep

	mu     sync.Mutex
	shards map[string]*shard // by master address, at most maxShards
}

// shard is one outage state: the whole of Redis, or one Cluster master.
type shard struct {
	addr      string // the master's address; "" for the whole of Redis
	down      atomic.Bool
	lastProbe atomic.Int64 // unix nanoseconds of the last command tried during an outage
	// sample is a key that failed on the shard (under health.mu): when
	// its slot is served by another address, the shard has failed over.
	sample string
}

// probeInterval is how often, during an outage, one command is let
// through to see whether Redis is back.
const probeInterval = time.Second

// maxShards bounds the shards tracked: Redis Cluster is meant for at most
// 1,000 nodes. Beyond it, a failing master is counted as the whole of
// Redis.
const maxShards = 1024

// op bounds one Redis command, so that a sick Redis costs a request at
// most opTimeout before it is served upstream.
func (h *health) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, h.opTimeout)
}

// available reports whether Redis answered its last command; in a
// Cluster, whether any shard the worker used since an outage began is up.
func (h *health) available() bool {
	if h.down.Load() == 0 {
		return true
	}
	if h.all.down.Load() {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.shards {
		if !s.down.Load() {
			return true
		}
	}
	return false
}

// skip reports whether to leave Redis alone for key. During an outage
// only one command a second goes to it (to key's shard in a Cluster), as
// a probe: a Redis that drops packets would otherwise cost every request
// its command timeouts.
func (h *health) skip(ctx context.Context, key string) bool {
	if h.down.Load() == 0 {
		return false
	}
	if h.all.down.Load() {
		return h.all.skip(h.now())
	}
	s := h.shardOf(ctx, key, true)
	return s != nil && s.skip(h.now())
}

func (s *shard) skip(now time.Time) bool {
	if !s.down.Load() {
		return false
	}
	last := s.lastProbe.Load()
	if now.UnixNano()-last < int64(probeInterval) {
		return true
	}
	return !s.lastProbe.CompareAndSwap(last, now.UnixNano())
}

// shardOf is the outage state of key's master: all outside a Cluster or
// when the master cannot be named; nil for a master not tracked, unless
// add, which tracks it (up).
func (h *health) shardOf(ctx context.Context, key string, add bool) *shard {
	addr, ok := h.masterOf(ctx, key)
	if !ok {
		return &h.all
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.tracked(addr, add)
}

// masterOf is the address of the master serving key's slot, as
// go-redis's copy of the slot map has it; false outside a Cluster, or
// when the map cannot be read.
func (h *health) masterOf(ctx context.Context, key string) (string, bool) {
	if h.cluster == nil {
		return "", false
	}
	// Only a client that never read the slot map asks the cluster,
	// bounded.
	ctx, cancel := h.op(context.WithoutCancel(ctx))
	defer cancel()
	node, err := h.cluster.MasterForKey(ctx, key)
	if err != nil {
		return "", false
	}
	return node.Options().Addr, true
}

// tracked is addr's shard, under h.mu: nil when it is not tracked,
// unless add; &h.all when maxShards are, all down.
func (h *health) tracked(addr string, add bool) *shard {
	if s := h.shards[addr]; s != nil || !add {
		return s
	}
	if h.shards == nil {
		h.shards = map[string]*shard{}
	}
	if len(h.shards) >= maxShards {
		for a, s := range h.shards {
			if !s.down.Load() {
				delete(h.shards, a)
				break
			}
		}
		if len(h.shards) >= maxShards {
			return &h.all
		}
	}
	s := &shard{addr: addr}
	h.shards[addr] = s
	return s
}

// failed records a failed command on key. A command cut short by its
// caller's context (a request given up, a worker stopping) says nothing
// about Redis and is not counted as an outage.
func (h *health) failed(caller context.Context, key, op string, err error) {
	if caller.Err() != nil {
		return
	}
	h.onError(op)
	s := &h.all
	addr, routed := h.masterOf(caller, key)
	// A shard is marked down under h.mu, while it is in h.shards: the
	// sweep and the end of an outage forget only shards that are up.
	h.mu.Lock()
	if routed {
		s = h.tracked(addr, true)
		if s != &h.all {
			s.sample = key
		}
	}
	// The next probe is a second after this failure, not after the start
	// of the command that failed: a Redis that never answers takes longer
	// than that to time out, and would otherwise be probed by every
	// command.
	s.lastProbe.Store(h.now().UnixNano())
	began := s.down.CompareAndSwap(false, true)
	if began {
		h.down.Add(1)
	}
	h.mu.Unlock()
	if !began {
		return
	}
	if s.addr == "" {
		h.log.Warn("redis unavailable: answering from memory and registries until it is back",
			zap.String("op", op), zap.Error(err))
		return
	}
	h.log.Warn("redis unavailable on one cluster shard: its keys are answered from memory and registries until it is back or failed over; the other shards are still shared",
		zap.String("shard", s.addr), zap.String("op", op), zap.Error(err))
}

// ok records a command on key that Redis answered.
func (h *health) ok(ctx context.Context, key string) {
	if h.down.Load() == 0 {
		return
	}
	if h.cluster == nil {
		h.up(&h.all, "")
		return
	}
	h.up(&h.all, "") // the cluster answered: its slot map can be read
	if s := h.shardOf(ctx, key, true); s != nil {
		h.up(s, "")
	}
	h.sweep(ctx)
}

// up ends s's outage; to is the address its slots moved to, if they did.
func (h *health) up(s *shard, to string) {
	if !s.down.CompareAndSwap(true, false) {
		return
	}
	if h.down.Add(-1) == 0 && h.cluster != nil {
		// The outage is over: forget the shards seen during it, so
		// that the next one's Available counts only shards used since.
		h.mu.Lock()
		for a, s := range h.shards {
			if !s.down.Load() {
				delete(h.shards, a)
			}
		}
		h.mu.Unlock()
	}
	switch {
	case s.addr == "":
		h.log.Info("redis available again: sharing the cache with the fleet")
	case to != "":
		h.log.Info("redis available again on the cluster shard: its slots failed over, sharing its keys with the fleet",
			zap.String("shard", s.addr), zap.String("now", to))
	default:
		h.log.Info("redis available again on the cluster shard: sharing its keys with the fleet",
			zap.String("shard", s.addr))
	}
}

// sweep, once a probe interval while a shard is down, ends the outage of
// shards whose slots another master now serves: no key is sent to the
// dead address any more, so no probe would ever end it.
func (h *health) sweep(ctx context.Context) {
	now, last := h.now().UnixNano(), h.lastSweep.Load()
	if now-last < int64(probeInterval) || !h.lastSweep.CompareAndSwap(last, now) {
		return
	}
	type downShard struct {
		s      *shard
		sample string
	}
	var downs []downShard
	h.mu.Lock()
	for _, s := range h.shards {
		if s.down.Load() && s.sample != "" {
			downs = append(downs, downShard{s, s.sample})
		}
	}
	h.mu.Unlock()
	for _, d := range downs {
		if node, err := h.cluster.MasterForKey(ctx, d.sample); err == nil && node.Options().Addr != d.s.addr {
			h.up(d.s, node.Options().Addr)
			h.mu.Lock()
			if h.shards[d.s.addr] == d.s && !d.s.down.Load() {
				delete(h.shards, d.s.addr)
			}
			h.mu.Unlock()
		}
	}
}
