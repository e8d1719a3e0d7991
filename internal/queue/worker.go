// Package queue serves the capabilities on NATS: queue subscriptions,
// dispatch of misses to a bounded fetch pool, singleflight, and replies in
// the NATS service-framework error convention.
package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcap/regcap/internal/handlers"
	"github.com/regcap/regcap/internal/rediscache"
)

// Header names of the wire contract.
const (
	HeaderCache      = "Regcap-Cache"
	HeaderPlatform   = "Regcap-Platform"
	HeaderErrorCode  = "Nats-Service-Error-Code"
	HeaderError      = "Nats-Service-Error"
	HeaderRetryAfter = "Retry-After"
)

// Values of the Regcap-Cache header.
const (
	CacheHit    = "hit"
	CacheMiss   = "miss"
	CacheShared = "shared"
)

// Fetcher answers a request from the registry.
type Fetcher interface {
	Fetch(ctx context.Context, req handlers.Request) ([]byte, error)
}

// Cache stores answers. Local must not block on the network.
type Cache interface {
	Local(key string) ([]byte, bool)
	Get(ctx context.Context, key string) ([]byte, bool)
	Set(ctx context.Context, key string, body []byte, expires time.Time)
}

// Observer is told the outcome of every request, for metrics. code is 0
// on success; cache is the Regcap-Cache value or "" for errors. The fetch
// pool is not pushed to it: metrics read Worker.FetchPool when scraped.
type Observer interface {
	Request(fn handlers.Function, code int, cache string, elapsed time.Duration)
}

// FleetLock lets one worker of a fleet fetch a key while the others wait
// for its answer. *rediscache.Cache implements it.
type FleetLock interface {
	Lock(ctx context.Context, key string, hold time.Duration) (*rediscache.Lease, *rediscache.Waiter)
}

type nopObserver struct{}

func (nopObserver) Request(handlers.Function, int, string, time.Duration) {}

// Worker answers capability requests. Create it with New, then Start.
type Worker struct {
	nc      *nats.Conn
	fetcher Fetcher
	cache   Cache
	log     *zap.Logger
	obs     Observer

	prefix       string
	queueGroup   string
	platform     v1.Platform
	fetchTimeout time.Duration
	ttl          time.Duration
	immutableTTL time.Duration
	maxPending   int64
	fleet        FleetLock     // nil: per-worker singleflight only
	lockWait     time.Duration // 0: fetchTimeout

	keys *otter.Cache[string, string] // raw request → cache key
	// repliedOffline is set when a reply went to the reconnect buffer.
	repliedOffline atomic.Bool
	pool           chan struct{} // fetch slots
	pending        atomic.Int64  // requests taken and not answered beyond memory
	group          singleflight.Group
	tokens         atomic.Uint64

	life     context.Context // cancelled only by a hard stop
	hardStop context.CancelFunc
	inflight sync.WaitGroup
	subs     []*nats.Subscription
}

// Option configures a Worker.
type Option func(*Worker)

// WithSubjectPrefix sets the subject prefix (default "kubewarden").
func WithSubjectPrefix(p string) Option { return func(w *Worker) { w.prefix = p } }

// WithQueueGroup sets the queue group (default "regcap").
func WithQueueGroup(g string) Option { return func(w *Worker) { w.queueGroup = g } }

// WithPlatform sets the platform indexes resolve to when a request names
// none (default: the worker's own).
func WithPlatform(p v1.Platform) Option { return func(w *Worker) { w.platform = p } }

// WithFetchTimeout bounds each upstream fetch (default 10s).
func WithFetchTimeout(d time.Duration) Option { return func(w *Worker) { w.fetchTimeout = d } }

// WithTTL sets how long answers are cached, counted from the fetch
// (default 60s), and the TTL for digest references.
func WithTTL(ttl, immutable time.Duration) Option {
	return func(w *Worker) { w.ttl, w.immutableTTL = ttl, immutable }
}

// WithConcurrency bounds simultaneous upstream fetches (default 64).
func WithConcurrency(n int) Option {
	return func(w *Worker) { w.pool = make(chan struct{}, max(n, 1)) }
}

// WithMaxPending bounds requests waiting beyond the memory tier; past it
// the worker answers 503 at once (default 1024).
func WithMaxPending(n int) Option { return func(w *Worker) { w.maxPending = int64(max(n, 1)) } }

// WithFleetLock makes a worker that misses take the fleet lock for the key
// before fetching, and wait up to wait (0: the fetch timeout) for the
// holder's answer when another worker has it.
func WithFleetLock(l FleetLock, wait time.Duration) Option {
	return func(w *Worker) { w.fleet, w.lockWait = l, wait }
}

// WithLogger sets the logger.
func WithLogger(l *zap.Logger) Option { return func(w *Worker) { w.log = l } }

// WithObserver sets the metrics observer.
func WithObserver(o Observer) Option { return func(w *Worker) { w.obs = o } }

// New returns a Worker that will serve on nc.
func New(nc *nats.Conn, fetcher Fetcher, cache Cache, opts ...Option) *Worker {
	w := &Worker{
		nc: nc, fetcher: fetcher, cache: cache,
		log: zap.NewNop(), obs: nopObserver{},
		prefix: "kubewarden", queueGroup: "regcap",
		platform:     handlers.DefaultPlatform(),
		fetchTimeout: 10 * time.Second,
		ttl:          time.Minute,
		maxPending:   1024,
		pool:         make(chan struct{}, 64),
	}
	for _, o := range opts {
		o(w)
	}
	if w.immutableTTL <= 0 {
		w.immutableTTL = w.ttl
	}
	if w.lockWait <= 0 {
		w.lockWait = w.fetchTimeout
	}
	w.life, w.hardStop = context.WithCancel(context.Background())
	w.keys = otter.Must(&otter.Options[string, string]{
		MaximumWeight: 4 << 20,
		Weigher:       func(k, v string) uint32 { return uint32(len(k) + len(v) + 64) },
	})
	return w
}

// Start subscribes to the three subjects.
func (w *Worker) Start() error {
	for _, fn := range handlers.Functions() {
		sub, err := w.nc.QueueSubscribe(fn.Subject(w.prefix), w.queueGroup, w.handler(fn))
		if err != nil {
			w.unsubscribe()
			return fmt.Errorf("subscribing to %s: %w", fn.Subject(w.prefix), err)
		}
		// Bursts queue in the client, not at the server: the callback is
		// fast, and max-pending is what bounds real work.
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			w.unsubscribe()
			return err
		}
		w.subs = append(w.subs, sub)
	}
	// Without a connection yet (RetryOnFailedConnect), the subscriptions
	// are sent when it comes.
	if w.nc.IsConnected() {
		if err := w.nc.Flush(); err != nil {
			w.unsubscribe()
			return fmt.Errorf("subscribing: %w", err)
		}
	}
	return nil
}

func (w *Worker) unsubscribe() {
	for _, s := range w.subs {
		_ = s.Unsubscribe()
	}
	w.subs = nil
}

// Pending is the number of requests taken and not yet answered beyond
// the memory tier (waiting on Redis, the fetch pool or a fetch).
func (w *Worker) Pending() int { return int(w.pending.Load()) }

// Subjects lists the subjects served.
func (w *Worker) Subjects() []string {
	var s []string
	for _, fn := range handlers.Functions() {
		s = append(s, fn.Subject(w.prefix))
	}
	return s
}

// Shutdown stops taking requests, answers every request already taken and
// returns. If ctx ends first, fetches still running are cancelled (their
// requests get 503) and Shutdown returns ctx's error once all are answered.
func (w *Worker) Shutdown(ctx context.Context) error {
	for _, s := range w.subs {
		if err := s.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			w.log.Warn("draining subscription", zap.String("subject", s.Subject), zap.Error(err))
		}
	}
	done := make(chan struct{})
	go func() {
		// Once every message the client holds has gone through its
		// callback, the in-flight count is final: a drained subscription
		// becomes invalid then, and a disconnected one gets no more
		// messages, so an empty pending queue is enough.
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for w.subsValid() && !(!w.nc.IsConnected() && w.subsIdle()) && w.life.Err() == nil {
			select {
			case <-t.C:
			case <-w.life.Done():
			}
		}
		w.inflight.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		w.hardStop()
		<-done
	}
	w.hardStop()
	// Replies written while disconnected wait in the reconnect buffer:
	// give the reconnect the rest of ctx, then push them out. A worker
	// that answered nothing offline (or never connected), or whose
	// buffer was flushed by a reconnect since, returns at once.
	if n, _ := w.nc.Buffered(); w.repliedOffline.Load() && n > 0 {
		t := time.NewTicker(10 * time.Millisecond)
		for !w.nc.IsConnected() && ctx.Err() == nil && !w.nc.IsClosed() {
			select {
			case <-t.C:
			case <-ctx.Done():
			}
		}
		t.Stop()
	}
	if w.nc.IsConnected() {
		if ferr := w.nc.FlushTimeout(5 * time.Second); ferr != nil && err == nil {
			err = ferr
		}
	}
	return err
}

// subsIdle reports whether no subscription holds undelivered messages.
func (w *Worker) subsIdle() bool {
	for _, s := range w.subs {
		if n, _, err := s.Pending(); err == nil && n > 0 {
			return false
		}
	}
	return true
}

func (w *Worker) subsValid() bool {
	for _, s := range w.subs {
		if s.IsValid() {
			return true
		}
	}
	return false
}

func (w *Worker) handler(fn handlers.Function) nats.MsgHandler {
	return func(m *nats.Msg) {
		if m.Reply == "" {
			return // a publish, not a request: nobody to answer
		}
		start := time.Now()
		// A repeated payload skips the reference parser on a hit: the
		// callback is serial per subject, so its cost bounds hit throughput.
		raw := rawKey(fn, m)
		if key, ok := w.keys.GetIfPresent(raw); ok {
			if body, ok := w.cache.Local(key); ok {
				w.reply(m, fn, body, CacheHit, start)
				return
			}
		}
		req, err := w.decode(fn, m)
		if err != nil {
			w.replyError(m, fn, err, start)
			return
		}
		key := req.Key()
		w.keys.Set(raw, key)
		if body, ok := w.cache.Local(key); ok {
			w.reply(m, fn, body, CacheHit, start)
			return
		}
		if n := w.pending.Add(1); n > w.maxPending {
			w.pending.Add(-1)
			w.replyError(m, fn, handlers.Errorf(503, req.Ref.Name(), "worker over its queue limit (%d requests pending); retry", w.maxPending), start)
			return
		}
		w.inflight.Add(1)
		go func() {
			defer w.inflight.Done()
			defer w.pending.Add(-1)
			w.serveMiss(m, req, key, start)
		}()
	}
}

// rawKey identifies a request by its bytes: the function, the platform
// header (config only) and the payload.
func rawKey(fn handlers.Function, m *nats.Msg) string {
	p := ""
	if fn == handlers.OCIManifestConfig {
		p = m.Header.Get(HeaderPlatform)
	}
	return string(fn) + "\x00" + p + "\x00" + string(m.Data)
}

func (w *Worker) decode(fn handlers.Function, m *nats.Msg) (handlers.Request, error) {
	ref, err := handlers.ParseReference(m.Data)
	if err != nil {
		return handlers.Request{}, err
	}
	req := handlers.Request{Function: fn, Ref: ref}
	if fn == handlers.OCIManifestConfig {
		req.Platform = w.platform
		if p := m.Header.Get(HeaderPlatform); p != "" {
			if req.Platform, err = handlers.ParsePlatform(p); err != nil {
				// ParsePlatform's 400 knows no image; the answer names it.
				var he *handlers.Error
				if errors.As(err, &he) {
					he.Image = ref.Name()
				}
				return handlers.Request{}, err
			}
		}
	}
	return req, nil
}

type result struct {
	body    []byte
	outcome string // for the leader: miss, or hit when the re-check found it
	leader  uint64
}

func (w *Worker) serveMiss(m *nats.Msg, req handlers.Request, key string, start time.Time) {
	if body, ok := w.cache.Get(w.life, key); ok {
		w.reply(m, req.Function, body, CacheHit, start)
		return
	}
	token := w.tokens.Add(1)
	ch := w.group.DoChan(key, func() (any, error) { return w.fetch(req, key, token) })
	res := <-ch
	if res.Err != nil {
		w.replyError(m, req.Function, res.Err, start)
		return
	}
	r := res.Val.(result)
	outcome := CacheShared
	if r.leader == token {
		outcome = r.outcome
	}
	w.reply(m, req.Function, r.body, outcome, start)
}

// fetch runs once per key at a time, on the worker's context rather than
// a caller's, so that no caller's deadline fails the others. With a fleet
// lock it also runs once per key across the fleet: the other workers wait
// for the holder's answer.
func (w *Worker) fetch(req handlers.Request, key string, leader uint64) (result, error) {
	// Waiting, for a slot or for another worker's fetch, is bounded by
	// --lock-wait, and the registry request by --fetch-timeout of its
	// own, so every request taken is answered within the two (give or take
	// a few Redis commands, each bounded by the cache's command timeout),
	// and a 504 always means the registry was slow, never that this worker
	// was busy.
	wait, cancel := context.WithTimeout(w.life, w.lockWait)
	defer cancel()
	// The fetch that just finished may have filled the cache.
	if body, ok := w.cache.Get(wait, key); ok {
		return result{body: body, outcome: CacheHit, leader: leader}, nil
	}
	if err := w.acquireSlot(wait, req); err != nil {
		return result{}, err
	}
	// The slot is taken before the lock so that the lock is held only
	// while fetching: its expiry then needs to cover one fetch, not a
	// wait for a slot as well.
	var lease *rediscache.Lease
	if w.fleet != nil {
		var waiter *rediscache.Waiter
		// On the worker's context, not the wait's: a slot that came at
		// the end of the wait must still take the lock (bounded by the
		// cache's command timeout), or the fleet would fetch twice when
		// it is busiest.
		lease, waiter = w.fleet.Lock(w.life, key, w.fetchTimeout+lockMargin)
		if waiter != nil {
			// Waiting is not fetching: give the slot to others meanwhile.
			w.releaseSlot()
			if ans := waiter.Wait(wait, w.lockWait); ans != nil {
				if f := ans.Failure; f != nil {
					return result{}, &handlers.Error{Code: f.Code, Image: req.Ref.Name(), Cause: f.Message, RetryAfter: f.RetryAfter}
				}
				return result{body: ans.Body, outcome: CacheShared, leader: leader}, nil
			}
			// No answer in time, or the holder gave up or died: fetch
			// here, if a slot is free now (the wait is spent).
			if err := w.acquireSlot(wait, req); err != nil {
				return result{}, err
			}
		}
		if lease != nil {
			// The holder before us may have stored it since our look.
			if body, ok := w.cache.Get(w.life, key); ok {
				w.releaseSlot()
				lease.Done(w.life, nil)
				return result{body: body, outcome: CacheHit, leader: leader}, nil
			}
		}
	}
	body, err := w.fetchUpstream(w.life, req, key)
	w.releaseSlot()
	if err != nil {
		he := handlers.Classify(req.Ref.Name(), err)
		if lease != nil {
			if he.Code == 503 {
				// This worker is stopping or overloaded, which says
				// nothing about the image: let the waiters try.
				lease.Abandon(w.life)
			} else {
				lease.Done(w.life, &rediscache.Failure{Code: he.Code, Message: he.Cause, RetryAfter: he.RetryAfter})
			}
		}
		return result{}, he
	}
	if lease != nil {
		lease.Done(w.life, nil)
	}
	return result{body: body, outcome: CacheMiss, leader: leader}, nil
}

// lockMargin is how much longer than a fetch the fleet lock is held: the
// re-check before the fetch and the store after it.
const lockMargin = 2 * time.Second

// acquireSlot takes a fetch slot, waiting for one until ctx ends. A free
// slot is taken even when ctx has already ended.
func (w *Worker) acquireSlot(ctx context.Context, req handlers.Request) error {
	select {
	case w.pool <- struct{}{}:
		return nil
	default:
	}
	select {
	case w.pool <- struct{}{}:
	case <-ctx.Done():
		if w.life.Err() != nil {
			return handlers.Errorf(503, req.Ref.Name(), "worker shutting down")
		}
		return handlers.Errorf(503, req.Ref.Name(), "all %d fetch slots stayed busy; retry", cap(w.pool))
	}
	return nil
}

func (w *Worker) releaseSlot() { <-w.pool }

// FetchPool reports the fetch pool now: the fetch slots in use, and the
// requests taken beyond the memory tier that hold none (waiting on Redis,
// a slot, or a fetch another request or worker is making). Metrics read
// it at scrape time, so the gauges follow every change of either count.
func (w *Worker) FetchPool() (inFlight, queued int) {
	inFlight = len(w.pool)
	return inFlight, max(int(w.pending.Load())-inFlight, 0)
}

// fetchUpstream asks the registry and stores the answer. The caller holds
// a fetch slot.
func (w *Worker) fetchUpstream(ctx context.Context, req handlers.Request, key string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, w.fetchTimeout)
	defer cancel()
	fetched := time.Now()
	body, err := w.fetcher.Fetch(ctx, req)
	if err != nil {
		return nil, err
	}
	ttl := w.ttl
	if req.Immutable() {
		ttl = w.immutableTTL
	}
	w.cache.Set(w.life, key, body, fetched.Add(ttl))
	return body, nil
}

// respond sends r, noting when it can only be buffered for a reconnect.
func (w *Worker) respond(m *nats.Msg, fn handlers.Function, r *nats.Msg) {
	if !w.nc.IsConnected() {
		w.repliedOffline.Store(true)
	}
	if err := m.RespondMsg(r); err != nil {
		w.log.Warn("reply not sent", zap.String("function", string(fn)), zap.Error(err))
	}
}

func (w *Worker) reply(m *nats.Msg, fn handlers.Function, body []byte, outcome string, start time.Time) {
	r := nats.NewMsg(m.Reply)
	r.Header.Set(HeaderCache, outcome)
	r.Data = body
	w.respond(m, fn, r)
	w.obs.Request(fn, 0, outcome, time.Since(start))
}

func (w *Worker) replyError(m *nats.Msg, fn handlers.Function, err error, start time.Time) {
	var he *handlers.Error
	if !errors.As(err, &he) {
		he = handlers.Classify("", err)
	}
	r := nats.NewMsg(m.Reply)
	r.Header.Set(HeaderErrorCode, strconv.Itoa(he.Code))
	r.Header.Set(HeaderError, headerSafe(he.Error()))
	if he.RetryAfter != "" {
		r.Header.Set(HeaderRetryAfter, headerSafe(he.RetryAfter))
	}
	w.respond(m, fn, r)
	lvl := zap.InfoLevel
	if he.Code >= 500 {
		lvl = zap.WarnLevel
	}
	w.log.Log(lvl, "request failed", zap.String("function", string(fn)), zap.String("image", he.Image),
		zap.Int("code", he.Code), zap.String("cause", he.Cause))
	w.obs.Request(fn, he.Code, "", time.Since(start))
}

// headerSafe keeps a header value on one line.
func headerSafe(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\r' || c == '\n' || c < 0x20 && c != '\t' {
			b[i] = ' '
		}
	}
	return string(b)
}
