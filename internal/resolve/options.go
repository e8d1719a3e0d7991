package resolve

import (
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/rediscache"
)

// options are a Resolver's settings, apart from its state, as New fixes
// them.
type options struct {
	platform     v1.Platform
	fetchTimeout time.Duration
	lockWait     time.Duration
	ttl          time.Duration
	immutableTTL time.Duration
	maxPending   int64
	staleIfError time.Duration
	refreshAhead float64
	ttlJitter    float64
	negativeTTL  time.Duration
	concurrency  int
	perRegistry  int
	memoryBytes  uint64
	cache        *rediscache.Cache // nil without Redis
	log          *zap.Logger
	tracer       trace.Tracer // nil: not traced
	onRefresh    func()
	onNegative   func()
	now          func() time.Time
}

// Option configures a Resolver.
type Option func(*options)

func makeOptions(opts ...Option) options {
	o := options{
		log:          zap.NewNop(),
		platform:     handlers.DefaultPlatform(),
		fetchTimeout: 10 * time.Second,
		ttl:          time.Minute,
		maxPending:   1024,
		memoryBytes:  rediscache.DefaultMemorySize,
		onRefresh:    func() {},
		onNegative:   func() {},
		concurrency:  64,
		now:          time.Now,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.immutableTTL <= 0 {
		o.immutableTTL = o.ttl
	}
	if o.lockWait <= 0 {
		o.lockWait = o.fetchTimeout
	}
	if o.perRegistry <= 0 {
		o.perRegistry = max(o.concurrency/4, 1)
	}
	o.perRegistry = min(o.perRegistry, o.concurrency)
	return o
}

// WithPlatform sets the platform indexes resolve to when a request names
// none (default: the worker's own).
func WithPlatform(p v1.Platform) Option { return func(o *options) { o.platform = p } }

// WithFetchTimeout bounds each upstream fetch (default 10s).
func WithFetchTimeout(d time.Duration) Option { return func(o *options) { o.fetchTimeout = d } }

// WithTTL sets how long answers are cached, counted from the fetch
// (default 60s), and the TTL for digest references (0: the same).
func WithTTL(ttl, immutable time.Duration) Option {
	return func(o *options) { o.ttl, o.immutableTTL = ttl, immutable }
}

// WithStaleIfError keeps answers for d past their TTL, and serves one
// (outcome stale) when a fetch for its key fails with 429, a 5xx, a
// timeout or an unreachable registry, if it was fetched within d; never
// for 401, 403 or 404. While the registry keeps failing, a stale key goes
// upstream at most once per TTL for the whole fleet (0, the default:
// off).
func WithStaleIfError(d time.Duration) Option {
	return func(o *options) { o.staleIfError = max(d, 0) }
}

// WithRefreshAhead makes a hit on an entry in the last fraction of its
// TTL (0.2: the last 12 s of 60 s) trigger one background refresh of the
// key, for the whole fleet (the fleet lock makes it one), so that a hot
// key never expires under its callers. Keys nobody asks for expire (0,
// the default: off).
func WithRefreshAhead(fraction float64) Option {
	return func(o *options) { o.refreshAhead = min(max(fraction, 0), 1) }
}

// WithNegativeTTL caches 404 answers fleet-wide for d, so that a rollout
// asking for a mistyped tag costs one registry request per d, not one per
// admission request (0, the default: off).
func WithNegativeTTL(d time.Duration) Option { return func(o *options) { o.negativeTTL = max(d, 0) } }

// WithNegativeHook is called once per 404 answered from the cache, for
// metrics.
func WithNegativeHook(f func()) Option { return func(o *options) { o.onNegative = f } }

// WithTTLJitter spreads each TTL by ±fraction (0.1: ±10 %), so that keys
// fetched together do not expire together (0, the default: off).
func WithTTLJitter(fraction float64) Option {
	return func(o *options) { o.ttlJitter = min(max(fraction, 0), 0.5) }
}

// WithRefreshHook is called once per background refresh started, for
// metrics.
func WithRefreshHook(f func()) Option { return func(o *options) { o.onRefresh = f } }

// WithConcurrency bounds simultaneous upstream fetches (default 64), and
// those to any one registry (0: a quarter of all, at least 1): a registry
// that hangs holds at most its share. Past either bound a fetch waits up
// to the lock wait, then is answered 503.
func WithConcurrency(all, perRegistry int) Option {
	return func(o *options) { o.concurrency, o.perRegistry = max(all, 1), perRegistry }
}

// WithMaxPending bounds requests waiting beyond the memory tier; past it
// the answer is 503 at once (default 1024).
func WithMaxPending(n int) Option { return func(o *options) { o.maxPending = int64(max(n, 1)) } }

// WithMemory bounds the memory tier, in bytes (default
// rediscache.DefaultMemorySize); 0 turns it off, so that every hit asks
// Redis.
func WithMemory(bytes uint64) Option { return func(o *options) { o.memoryBytes = bytes } }

// WithRedis shares the cache with the fleet through c, and turns the
// fleet lock on: a worker that misses takes the key's lock before
// fetching, and the others wait up to lockWait (0: the fetch timeout) for
// its answer. The caller keeps c and closes it after the Resolver.
func WithRedis(c *rediscache.Cache, lockWait time.Duration) Option {
	return func(o *options) { o.cache, o.lockWait = c, lockWait }
}

// WithLogger sets the logger.
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.log = l } }
