// Package resolve answers capability requests, whatever front they came
// through: it decodes a request, and looks for its answer in the memory
// tier, then Redis, then shares one fetch per key in the worker
// (singleflight) and across the fleet (the fleet lock), fetches from the
// registry within a bounded pool of slots, and stores what it fetched in
// both tiers. It knows nothing of NATS or HTTP: fronts turn their
// messages into a Request and its Answer into their replies.
package resolve

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/registry"
)

// Request is a capability request as a front received it.
type Request struct {
	Function contract.Function
	// Payload is the waPC payload: a JSON string holding an image
	// reference.
	Payload []byte
	// Platform is the Regcap-Platform header, os/arch[/variant]; "" for
	// the resolver's default. Only oci_manifest_config reads it.
	Platform string
}

// Answer is a successful answer: the reply body, ready to send, and where
// it came from.
type Answer struct {
	Body    []byte
	Outcome contract.Outcome
	// Age is how long ago the answer was fetched, for stale answers.
	Age time.Duration
}

// The tiers, the lock and the fetch, as the resolver uses them.
type (
	memoryTier interface {
		Get(key string) (entry, bool)
		Set(key string, e entry)
	}
	sharedTier interface {
		Get(ctx context.Context, key string) (entry, bool)
		Set(ctx context.Context, key string, e entry)
		// SetBackoff and BackingOff share, fleet-wide, that a key's
		// fetch failed and it is answered stale for a while.
		SetBackoff(ctx context.Context, key string, d time.Duration)
		BackingOff(ctx context.Context, keys ...string) bool
	}
	locker interface {
		Lock(ctx context.Context, key string, hold time.Duration, newerThan time.Time) claim
	}
	fetcher interface {
		Fetch(ctx context.Context, req handlers.Request) ([]byte, error)
	}
)

// Resolver is safe for concurrent use. Create it with New; Close it to
// cancel the fetches still running.
type Resolver struct {
	fetch  fetcher
	mem    memoryTier
	shared sharedTier // nil without Redis
	lock   locker     // nil without Redis
	health *health    // nil without Redis
	closer func()
	log    *zap.Logger

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
	onRefresh    func()
	onNegative   func()
	refreshing   sync.Map // keys being refreshed by this worker

	// work counts the resolutions and refreshes running, so that Close
	// returns only once they are over (their lease released, their
	// Redis commands done); closed refuses new ones.
	workMu       sync.Mutex
	work         sync.WaitGroup
	closed       bool
	concurrency  int
	perRegistry  int
	memoryBytes  uint64
	redisOps     time.Duration
	onRedisError func(op string)
	onReject     func(reason string)
	rdb          redis.UniversalClient
	cacheKey     []byte
	maxAnswer    int
	now          func() time.Time

	rejectLogged *otter.Cache[string, struct{}]  // keys whose refused value was logged
	backoff      *otter.Cache[string, time.Time] // key → no fetch before, while serving it stale
	refreshHeld  *otter.Cache[string, time.Time] // key → no refresh before (a refresh failed)

	decoded *otter.Cache[string, query] // raw request → decoded request
	slots   *slots                      // fetch slots
	pending atomic.Int64                // requests beyond the memory tier
	group   singleflight.Group
	tokens  atomic.Uint64

	life context.Context // ends at Close: fetches and waits are cancelled
	stop context.CancelFunc
}

// Option configures a Resolver.
type Option func(*Resolver)

// WithPlatform sets the platform indexes resolve to when a request names
// none (default: the worker's own).
func WithPlatform(p v1.Platform) Option { return func(r *Resolver) { r.platform = p } }

// WithFetchTimeout bounds each upstream fetch (default 10s).
func WithFetchTimeout(d time.Duration) Option { return func(r *Resolver) { r.fetchTimeout = d } }

// WithTTL sets how long answers are cached, counted from the fetch
// (default 60s), and the TTL for digest references (0: the same).
func WithTTL(ttl, immutable time.Duration) Option {
	return func(r *Resolver) { r.ttl, r.immutableTTL = ttl, immutable }
}

// WithStaleIfError keeps answers for d past their TTL, and serves one
// (outcome stale) when a fetch for its key fails with 429, a 5xx, a
// timeout or an unreachable registry, if it was fetched within d; never
// for 401, 403 or 404. While the registry keeps failing, a stale key goes
// upstream at most once per TTL for the whole fleet (0, the default:
// off).
func WithStaleIfError(d time.Duration) Option {
	return func(r *Resolver) { r.staleIfError = max(d, 0) }
}

// WithRefreshAhead makes a hit on an entry in the last fraction of its
// TTL (0.2: the last 12 s of 60 s) trigger one background refresh of the
// key, for the whole fleet (the fleet lock makes it one), so that a hot
// key never expires under its callers. Keys nobody asks for expire (0,
// the default: off).
func WithRefreshAhead(fraction float64) Option {
	return func(r *Resolver) { r.refreshAhead = min(max(fraction, 0), 1) }
}

// WithNegativeTTL caches 404 answers fleet-wide for d, so that a rollout
// asking for a mistyped tag costs one registry request per d, not one per
// admission request (0, the default: off).
func WithNegativeTTL(d time.Duration) Option { return func(r *Resolver) { r.negativeTTL = max(d, 0) } }

// WithNegativeHook is called once per 404 answered from the cache, for
// metrics.
func WithNegativeHook(f func()) Option { return func(r *Resolver) { r.onNegative = f } }

// WithTTLJitter spreads each TTL by ±fraction (0.1: ±10 %), so that keys
// fetched together do not expire together (0, the default: off).
func WithTTLJitter(fraction float64) Option {
	return func(r *Resolver) { r.ttlJitter = min(max(fraction, 0), 0.5) }
}

// WithRefreshHook is called once per background refresh started, for
// metrics.
func WithRefreshHook(f func()) Option { return func(r *Resolver) { r.onRefresh = f } }

// WithConcurrency bounds simultaneous upstream fetches (default 64), and
// those to any one registry (0: a quarter of all, at least 1): a registry
// that hangs holds at most its share. Past either bound a fetch waits up
// to the lock wait, then is answered 503.
func WithConcurrency(all, perRegistry int) Option {
	return func(r *Resolver) { r.concurrency, r.perRegistry = max(all, 1), perRegistry }
}

// WithMaxPending bounds requests waiting beyond the memory tier; past it
// the answer is 503 at once (default 1024).
func WithMaxPending(n int) Option { return func(r *Resolver) { r.maxPending = int64(max(n, 1)) } }

// WithMemory bounds the memory tier, in bytes (default DefaultMemorySize);
// 0 turns it off, so that every hit asks Redis.
func WithMemory(bytes uint64) Option { return func(r *Resolver) { r.memoryBytes = bytes } }

// WithRedis shares the cache with the fleet through rdb, and turns the
// fleet lock on: a worker that misses takes the key's lock before
// fetching, and the others wait up to lockWait (0: the fetch timeout) for
// its answer. The caller keeps rdb and closes it after the Resolver.
func WithRedis(rdb redis.UniversalClient, lockWait time.Duration) Option {
	return func(r *Resolver) { r.rdb, r.lockWait = rdb, lockWait }
}

// WithRedisTimeout bounds each Redis command (default 1s), so that a sick
// Redis costs a request at most that much before it is served upstream.
func WithRedisTimeout(d time.Duration) Option { return func(r *Resolver) { r.redisOps = d } }

// WithRedisErrorHook is called with the operation name on every failed
// Redis command, for metrics.
func WithRedisErrorHook(f func(op string)) Option { return func(r *Resolver) { r.onRedisError = f } }

// WithCacheKey signs every Redis value with key (HMAC-SHA256) and
// accepts only values signed with it: anyone who can write to Redis but
// lacks the key cannot plant an answer. Every worker of a fleet needs the
// same key.
func WithCacheKey(key []byte) Option { return func(r *Resolver) { r.cacheKey = key } }

// WithMaxAnswer bounds the size of an answer read from Redis, in bytes
// (default 16 MiB): a larger value is refused unread.
func WithMaxAnswer(n int) Option { return func(r *Resolver) { r.maxAnswer = n } }

// WithRejectHook is called with the reason (short, checksum, signature,
// unsigned, version, too_large, wrong_type, no_ttl) whenever a Redis
// value is refused, for metrics.
func WithRejectHook(f func(reason string)) Option { return func(r *Resolver) { r.onReject = f } }

// WithLogger sets the logger.
func WithLogger(l *zap.Logger) Option { return func(r *Resolver) { r.log = l } }

// New returns a Resolver that fetches with f.
func New(f fetcher, opts ...Option) *Resolver {
	r := &Resolver{
		fetch:        f,
		log:          zap.NewNop(),
		platform:     handlers.DefaultPlatform(),
		fetchTimeout: 10 * time.Second,
		ttl:          time.Minute,
		maxPending:   1024,
		memoryBytes:  DefaultMemorySize,
		redisOps:     time.Second,
		onRedisError: func(string) {},
		onReject:     func(string) {},
		onRefresh:    func() {},
		onNegative:   func() {},
		maxAnswer:    16 << 20,
		concurrency:  64,
		now:          time.Now,
	}
	for _, o := range opts {
		o(r)
	}
	if r.immutableTTL <= 0 {
		r.immutableTTL = r.ttl
	}
	if r.lockWait <= 0 {
		r.lockWait = r.fetchTimeout
	}
	if r.perRegistry <= 0 {
		r.perRegistry = max(r.concurrency/4, 1)
	}
	r.slots = newSlots(r.concurrency, min(r.perRegistry, r.concurrency))
	r.mem = noMemory{}
	if r.memoryBytes > 0 {
		r.mem = newMemory(r.memoryBytes, r.now)
	}
	r.closer = func() {}
	if r.rdb != nil {
		r.health = &health{log: r.log, onError: r.onRedisError, opTimeout: r.redisOps, now: r.now}
		tier := &redisTier{rdb: r.rdb, health: r.health, now: r.now, macKey: r.cacheKey, maxBody: r.maxAnswer, reject: r.rejected}
		r.rejectLogged = otter.Must(&otter.Options[string, struct{}]{MaximumSize: 10000})
		lock := &fleetLock{rdb: r.rdb, tier: tier, health: r.health, log: r.log}
		r.shared, r.lock, r.closer = tier, lock, lock.Close
	}
	r.backoff = otter.Must(&otter.Options[string, time.Time]{MaximumSize: 100000})
	r.refreshHeld = otter.Must(&otter.Options[string, time.Time]{MaximumSize: 100000})
	r.life, r.stop = context.WithCancel(context.Background())
	r.decoded = otter.Must(&otter.Options[string, query]{
		MaximumWeight: 4 << 20,
		Weigher:       func(k string, q query) uint32 { return uint32(len(k) + 2*len(q.key) + 128) },
	})
	return r
}

// Close cancels the fetches and waits still running (their requests get
// 503) and stops the fleet lock's listener. Answer after Close is 503.
func (r *Resolver) Close() {
	r.workMu.Lock()
	r.closed = true
	r.workMu.Unlock()
	r.stop()
	r.work.Wait()
	r.closer()
}

// begin registers a resolution or refresh; false once closed.
func (r *Resolver) begin() bool {
	r.workMu.Lock()
	defer r.workMu.Unlock()
	if r.closed {
		return false
	}
	r.work.Add(1)
	return true
}

// Shared reports whether answers are shared with the fleet (Redis).
func (r *Resolver) Shared() bool { return r.shared != nil }

// RedisAvailable reports whether Redis answered its last command (true
// without Redis).
func (r *Resolver) RedisAvailable() bool { return r.health == nil || r.health.available() }

// Pending is the number of requests beyond the memory tier: waiting on
// Redis, a fetch slot, or a fetch.
func (r *Resolver) Pending() int { return int(r.pending.Load()) }

// FetchPool reports the fetch pool now: the fetch slots in use, and the
// requests taken beyond the memory tier that hold none (waiting on Redis,
// a slot, or a fetch another request or worker is making). Metrics read
// it at scrape time.
func (r *Resolver) FetchPool() (inFlight, queued int) {
	inFlight = r.slots.inFlight()
	return inFlight, max(int(r.pending.Load())-inFlight, 0)
}

// query is a decoded request and what the resolver derives from it once.
type query struct {
	req      handlers.Request
	key      string // cache key
	image    string // normalised reference, for messages
	registry string // its registry host, for the fetch slots
	ttl      time.Duration
}

// Lookup answers req without blocking, for fronts that must not wait (a
// NATS callback): a request that does not decode gets its error, a memory
// hit its answer. Otherwise ok is false, and Answer must go on to Redis or
// the registry.
func (r *Resolver) Lookup(req Request) (a Answer, ok bool, err error) {
	q, err := r.decode(req)
	if err != nil {
		return Answer{}, false, r.failed(req.Function, err)
	}
	if e, ok := r.mem.Get(q.key); ok && e.isFresh(r.now()) {
		if e.negative {
			return Answer{}, false, r.failed(req.Function, r.negativeHit(e))
		}
		r.refreshIfDue(q, e)
		return Answer{Body: e.body, Outcome: contract.Hit}, true, nil
	}
	return Answer{}, false, nil
}

// Answer answers req. Every error is a *contract.Error. ctx bounds only
// the caller's wait: the fetch it shares runs on the resolver's own
// context and deadline, so one caller giving up fails no other.
func (r *Resolver) Answer(ctx context.Context, req Request) (Answer, error) {
	a, err := r.answer(ctx, req)
	if err != nil {
		return Answer{}, r.failed(req.Function, err)
	}
	return a, nil
}

// answer is the request's path, top to bottom: decode, memory, then one
// resolution per key at a time in this worker.
func (r *Resolver) answer(ctx context.Context, req Request) (Answer, error) {
	q, err := r.decode(req)
	if err != nil {
		return Answer{}, err
	}
	if e, ok := r.mem.Get(q.key); ok && e.isFresh(r.now()) {
		if e.negative {
			return Answer{}, r.negativeHit(e)
		}
		r.refreshIfDue(q, e)
		return Answer{Body: e.body, Outcome: contract.Hit}, nil
	}
	if r.life.Err() != nil {
		return Answer{}, contract.Errorf(503, "%s: worker shutting down", q.image)
	}
	// Beyond the memory tier, requests wait on the network: bound them.
	if n := r.pending.Add(1); n > r.maxPending {
		r.pending.Add(-1)
		return Answer{}, contract.Errorf(503, "%s: worker over its queue limit (%d requests pending); retry", q.image, r.maxPending)
	}
	defer r.pending.Add(-1)
	token := r.tokens.Add(1)
	ch := r.group.DoChan(q.key, func() (any, error) {
		if !r.begin() {
			return resolved{}, contract.Errorf(503, "%s: worker shutting down", q.image)
		}
		defer r.work.Done()
		return r.resolve(q, token)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return Answer{}, res.Err
		}
		s := res.Val.(resolved)
		if s.leader != token && s.outcome == contract.Miss {
			// Another request of this worker fetched it.
			s.outcome = contract.Shared
		}
		return Answer{Body: s.body, Outcome: s.outcome, Age: s.age}, nil
	case <-ctx.Done():
		if r.life.Err() != nil || errors.Is(context.Cause(ctx), errShuttingDown) {
			return Answer{}, contract.Errorf(503, "%s: worker shutting down", q.image)
		}
		// The caller gave up; the fetch goes on and fills the cache.
		return Answer{}, contract.Errorf(504, "%s: not answered before the caller gave up; the fetch goes on", q.image)
	}
}

// errShuttingDown is the cause a front gives the context it cancels when
// it stops: its callers are answered 503, not 504.
var errShuttingDown = errors.New("worker shutting down")

// ShuttingDown returns a context that, cancelled, tells Answer its
// callers are cut short because the worker stops (503), not because they
// gave up (504).
func ShuttingDown() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	return ctx, func() { cancel(errShuttingDown) }
}

// resolved is what the one resolution of a key hands to every request
// that shared it.
type resolved struct {
	body    []byte
	outcome contract.Outcome
	age     time.Duration // for stale answers
	leader  uint64        // the token of the request that started it
}

// resolve runs once per key at a time in this worker, on the resolver's
// context rather than a caller's, so that no caller's deadline fails the
// others. Waiting, for a slot or for another worker's fetch, is bounded by
// --lock-wait, and the registry request by --fetch-timeout of its own: a
// 504 always means the registry was slow, never that this worker was busy.
func (r *Resolver) resolve(q query, leader uint64) (resolved, error) {
	hit := func(e entry, o contract.Outcome) (resolved, error) {
		if e.negative {
			return resolved{}, r.negativeHit(e)
		}
		r.refreshIfDue(q, e)
		return resolved{body: e.body, outcome: o, leader: leader}, nil
	}
	wait, cancel := context.WithTimeout(r.life, r.lockWait)
	defer cancel()
	// The resolution that just finished may have filled the memory tier.
	// An entry past its TTL is no hit, but may answer a failed fetch.
	var stale *entry
	if e, ok := r.mem.Get(q.key); ok {
		if e.isFresh(r.now()) {
			return hit(e, contract.Hit)
		}
		if !e.negative {
			stale = &e
		}
	}
	// The one Redis read before deciding to fetch or wait.
	if r.shared != nil {
		if e, ok := r.shared.Get(wait, q.key); ok {
			r.mem.Set(q.key, e)
			if e.isFresh(r.now()) {
				return hit(e, contract.Hit)
			}
			if !e.negative && (stale == nil || e.fetched.After(stale.fetched)) {
				stale = &e
			}
		}
	}
	// While the registry keeps failing, a key answered stale goes
	// upstream once per TTL for the fleet, not once per request.
	if stale != nil && r.now().Sub(stale.fetched) <= r.staleIfError && r.backingOff(wait, q) {
		return r.staleAnswer(*stale, leader), nil
	}
	// The slot is taken before the lock so that the lock is held only
	// while fetching: its expiry then covers one fetch, not a wait for a
	// slot as well.
	if err := r.acquireSlot(wait, q); err != nil {
		return r.orStale(err, stale, leader)
	}
	var c claim
	if r.lock != nil {
		// On the resolver's context, not the wait's: a slot that came at
		// the end of the wait must still take the lock (bounded by the
		// Redis command timeout), or the fleet would fetch twice when it
		// is busiest.
		c = r.lock.Lock(r.life, q.key, r.fetchTimeout+lockMargin, time.Time{})
	}
	switch {
	case c.found != nil:
		r.releaseSlot(q)
		r.mem.Set(q.key, *c.found)
		return hit(*c.found, contract.Hit)
	case c.waiter != nil:
		// Waiting is not fetching: give the slot to others meanwhile.
		r.releaseSlot(q)
		if v := c.waiter.Wait(wait, r.lockWait); v != nil {
			if v.failure != nil {
				return r.orStale(v.failure, stale, leader)
			}
			r.mem.Set(q.key, v.found)
			return hit(v.found, contract.Shared)
		}
		// No answer in time, or the holder gave up or died: fetch here,
		// if a slot is free now (the wait is spent).
		if err := r.acquireSlot(wait, q); err != nil {
			return r.orStale(err, stale, leader)
		}
	}
	if c.lease != nil && stale != nil && r.now().Sub(stale.fetched) <= r.staleIfError && r.backingOff(r.life, q) {
		// The holder before us failed and backed off between our look
		// and our lock: answer stale, and so do our waiters.
		r.releaseSlot(q)
		c.lease.Fail(r.life, contract.Errorf(503, "%s: registry failing, backing off", q.image))
		return r.staleAnswer(*stale, leader), nil
	}
	body, err := r.fetchAndStore(q, c.lease)
	if err != nil {
		return r.orStale(err, stale, leader)
	}
	return resolved{body: body, outcome: contract.Miss, leader: leader}, nil
}

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
func (r *Resolver) refreshIfDue(q query, e entry) {
	if r.refreshAhead == 0 {
		return
	}
	now := r.now()
	due := e.fresh.Add(-time.Duration(r.refreshAhead * float64(e.fresh.Sub(e.fetched))))
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
func (r *Resolver) refresh(q query, old entry) {
	wait, cancel := context.WithTimeout(r.life, r.lockWait)
	defer cancel()
	if r.backingOff(wait, q) || r.acquireSlot(wait, q) != nil {
		return
	}
	var c claim
	if r.lock != nil {
		c = r.lock.Lock(r.life, q.key, r.fetchTimeout+lockMargin, old.fetched)
	}
	switch {
	case c.found != nil:
		r.releaseSlot(q)
		r.mem.Set(q.key, *c.found)
		return
	case c.waiter != nil:
		r.releaseSlot(q)
		c.waiter.Cancel()
		return
	}
	r.onRefresh()
	if _, err := r.fetchAndStore(q, c.lease); err != nil {
		// Not again from this worker until the entry expires; the fleet
		// back-off (set by fetchAndStore for failures that deserve a
		// stale answer) is not this: a 404 here must show at expiry.
		r.refreshHeld.Set(q.key, old.fresh)
		r.log.Info("refresh ahead of expiry failed: serving the entry until it expires", zap.String("image", q.image), zap.Error(err))
	}
}

// staleWorthy reports whether a failure may be answered with a stale
// entry: the registry is rate-limiting, failing, slow or unreachable. A
// revoked credential or a deleted tag (401, 403, 404) must show, and so
// must a bad request.
func staleWorthy(err error) bool {
	ce := asContractError("", err)
	return ce.Code == 429 || ce.Code >= 500
}

// orStale answers err, or the stale entry when err is stale-worthy and the
// entry was fetched within --stale-if-error.
func (r *Resolver) orStale(err error, stale *entry, leader uint64) (resolved, error) {
	if stale == nil || !staleWorthy(err) || r.now().Sub(stale.fetched) > r.staleIfError {
		return resolved{}, err
	}
	r.log.Info("registry failed: answering stale", zap.Duration("age", r.now().Sub(stale.fetched)), zap.Error(err))
	return r.staleAnswer(*stale, leader), nil
}

func (r *Resolver) staleAnswer(e entry, leader uint64) resolved {
	return resolved{body: e.body, outcome: contract.Stale, age: r.now().Sub(e.fetched), leader: leader}
}

// backOff records that q's key was answered stale after err, a failed
// fetch: for one TTL, no worker of the fleet fetches it again; after a
// 429, no stale key of its registry is fetched before its Retry-After.
func (r *Resolver) backOff(q query, err error) {
	r.setBackoff(q.key, q.ttl)
	ce := asContractError("", err)
	if d, ok := registry.RetryAfter(ce.RetryAfter, r.now()); ok && ce.Code == 429 && d > 0 {
		r.setBackoff(registryBackoff(q.registry), d)
	}
}

func (r *Resolver) setBackoff(key string, d time.Duration) {
	r.backoff.Set(key, r.now().Add(d))
	if r.shared != nil {
		r.shared.SetBackoff(r.life, key, d)
	}
}

func registryBackoff(host string) string { return "registry:" + host }

// backingOff reports whether this worker or the fleet is backing off
// q's fetch: its key, or its registry after a 429.
func (r *Resolver) backingOff(ctx context.Context, q query) bool {
	keys := []string{q.key, registryBackoff(q.registry)}
	for _, k := range keys {
		if until, ok := r.backoff.GetIfPresent(k); ok && r.now().Before(until) {
			return true
		}
	}
	return r.shared != nil && r.shared.BackingOff(ctx, keys...)
}

// lockMargin is how much longer than a fetch the fleet lock is held: the
// store and the release after it.
const lockMargin = 2 * time.Second

// fetchAndStore asks the registry, stores the answer in both tiers and
// tells the fleet lock's waiters, if this worker holds the lock. The
// caller holds a fetch slot; it is released here.
func (r *Resolver) fetchAndStore(q query, held *lease) ([]byte, error) {
	ctx, cancel := context.WithTimeout(r.life, r.fetchTimeout)
	fetched := r.now()
	body, err := r.fetch.Fetch(ctx, q.req)
	cancel()
	r.releaseSlot(q)
	if err != nil {
		ce := asContractError(q.image, err)
		if ce.Code == 404 && r.negativeTTL > 0 {
			// Cached fleet-wide: the waiters read it as they read an
			// answer, and answer the same 404.
			r.store(q, entry{body: []byte(ce.Message), fetched: fetched, fresh: fetched.Add(r.negativeTTL),
				expires: fetched.Add(r.negativeTTL), negative: true}, held)
			return nil, ce
		}
		if r.staleIfError > 0 && staleWorthy(ce) {
			// Before the waiters hear of the failure: none of them, nor
			// any worker after them, tries again within the back-off.
			r.backOff(q, ce)
		}
		switch {
		case held == nil:
		case ce.Code == 503:
			// This worker is stopping or overloaded, which says nothing
			// about the image: let the waiters try.
			held.Abandon(r.life)
		default:
			held.Fail(r.life, ce)
		}
		return nil, ce
	}
	fresh := fetched.Add(r.jittered(q.ttl))
	r.store(q, entry{body: body, fetched: fetched, fresh: fresh, expires: fresh.Add(r.staleIfError)}, held)
	return body, nil
}

// store keeps e in both tiers and, if this worker holds the fleet lock,
// tells the waiters: the value and their notice in one round trip.
func (r *Resolver) store(q query, e entry, held *lease) {
	r.mem.Set(q.key, e)
	switch {
	case held != nil:
		held.Store(r.life, e)
	case r.shared != nil:
		r.shared.Set(r.life, q.key, e)
	}
}

// negativeHit is the answer of a cached 404.
func (r *Resolver) negativeHit(e entry) error {
	r.onNegative()
	return &contract.Error{Code: 404, Message: string(e.body)}
}

// acquireSlot takes a fetch slot for q's registry, waiting for one until
// ctx ends.
func (r *Resolver) acquireSlot(ctx context.Context, q query) error {
	b := r.slots.acquire(ctx, q.registry)
	switch {
	case b == nil:
		return nil
	case r.life.Err() != nil:
		return contract.Errorf(503, "%s: worker shutting down", q.image)
	case b.registry:
		return contract.Errorf(503, "%s: all %d fetch slots for %s stayed busy (--concurrency-per-registry); retry", q.image, r.slots.per, q.registry)
	default:
		return contract.Errorf(503, "%s: all %d fetch slots stayed busy; retry", q.image, cap(r.slots.all))
	}
}

func (r *Resolver) releaseSlot(q query) { r.slots.release(q.registry) }

// decode turns req into a query. A repeated request skips the reference
// parser: on a hit its cost bounds the throughput of a NATS subject,
// whose callback is serial.
func (r *Resolver) decode(req Request) (query, error) {
	raw := rawKey(req)
	if q, ok := r.decoded.GetIfPresent(raw); ok {
		return q, nil
	}
	cr, err := handlers.ParseRequest(req.Function, req.Payload, req.Platform, r.platform)
	if err != nil {
		return query{}, err
	}
	q := query{req: cr, key: cr.Key(), image: cr.Ref.Name(), registry: cr.Ref.Context().RegistryStr(), ttl: r.ttl}
	if cr.Immutable() {
		q.ttl = r.immutableTTL
	}
	r.decoded.Set(raw, q)
	return q, nil
}

// rawKey identifies a request by its bytes: the function, the platform
// header (config only) and the payload.
func rawKey(req Request) string {
	p := ""
	if req.Function == contract.OCIManifestConfig {
		p = req.Platform
	}
	return string(req.Function) + "\x00" + p + "\x00" + string(req.Payload)
}

// asContractError returns err as the contract error it is: the fetch
// classified it where it ended, and the resolver made its own. Anything
// else is a bug, answered as 502 rather than lost.
func asContractError(image string, err error) *contract.Error {
	var ce *contract.Error
	if errors.As(err, &ce) {
		return ce
	}
	return contract.Errorf(502, "%s: %v", image, err)
}

// rejected reports a Redis value refused for key: counted every time,
// logged once per key (while it is remembered) so that a bad key cannot
// flood the log. The fetch that follows overwrites the value.
func (r *Resolver) rejected(key string, why *rejection) {
	r.onReject(why.reason)
	if _, seen := r.rejectLogged.GetIfPresent(key); seen {
		return
	}
	r.rejectLogged.Set(key, struct{}{})
	r.log.Warn("refused a value read from redis: answering as a miss, the fetch overwrites it",
		zap.String("key", key), zap.String("reason", why.reason), zap.String("detail", why.detail))
}

// failed logs a request that got an error answer, and returns the
// error as every front sends it: a *contract.Error whose message is one
// line of at most contract.MaxMessage bytes.
func (r *Resolver) failed(fn contract.Function, err error) *contract.Error {
	ce := asContractError("", err)
	if msg := bounded(ce.Message); msg != ce.Message {
		ce = &contract.Error{Code: ce.Code, Message: msg, RetryAfter: ce.RetryAfter}
	}
	lvl := zap.InfoLevel
	if ce.Code >= 500 {
		lvl = zap.WarnLevel
	}
	r.log.Log(lvl, "request failed", zap.String("function", string(fn)),
		zap.Int("code", ce.Code), zap.String("message", ce.Message))
	return ce
}

// bounded keeps a message on one line of at most contract.MaxMessage
// bytes, cut at a rune boundary and marked with an ellipsis.
func bounded(msg string) string {
	b := []byte(msg)
	for i, c := range b {
		if c == '\r' || c == '\n' || c < 0x20 && c != '\t' {
			b[i] = ' '
		}
	}
	const ellipsis = "…"
	if len(b) > contract.MaxMessage {
		cut := contract.MaxMessage - len(ellipsis)
		for cut > 0 && !utf8.RuneStart(b[cut]) {
			cut--
		}
		b = append(b[:cut:cut], ellipsis...)
	}
	return string(b)
}
