package rediscache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// The fleet lock. A worker that misses takes lockPrefix+key with SET NX PX
// and a random token; the others wait for its answer. The holder stores
// the value, then, if it still holds the lock, publishes the outcome on
// donePrefix+key and deletes the lock, both in one script so that no
// waiter can see the lock gone before the notification is sent. A holder
// whose lock expired says nothing: the waiters are then another holder's,
// and its outcome (or its failure) is not theirs to act on; they see the
// value, or the lock gone, at their periodic check.
//
// Notifications use Redis pub/sub rather than a NATS subject: the lock,
// the value and the wake-up then live in one system, so there is no window
// where one is reachable and the other is not, and a Redis outage turns
// the whole mechanism off at once (every worker falls back to its own
// singleflight). Each Cache holds one PSUBSCRIBE connection for all keys,
// not one per waiting key.
const (
	lockPrefix = "regcap:lock:"
	donePrefix = "regcap:done:"
)

// checkEvery is how often a waiter looks at the value and the lock itself,
// in case a notification was lost (pub/sub is at most once, e.g. across a
// Redis reconnect) or the holder died and its lock was removed. It is a
// safety net, not the wake-up path.
const checkEvery = 250 * time.Millisecond

// release publishes the outcome and deletes the lock, only if the token
// still owns it. A holder whose lock expired must neither delete another
// worker's lock nor wake that worker's waiters: a notice of its failure,
// or of its giving up, would make them fail or fetch while the new
// holder's fetch is under way.
var release = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	redis.call("PUBLISH", KEYS[2], ARGV[2])
	return redis.call("DEL", KEYS[1])
end
return 0
`)

// Failure is an error answer the lock holder passes to its waiters. It is
// never cached.
type Failure struct {
	Code       int    `json:"code"`
	Message    string `json:"message"`
	RetryAfter string `json:"retry_after,omitempty"`
}

// Answer is what a waiter received from the lock holder: a body (read
// from the cache the holder filled) or the holder's failure.
type Answer struct {
	Body    []byte
	Failure *Failure
}

type notice struct {
	OK        bool     `json:"ok,omitempty"`
	Abandoned bool     `json:"abandoned,omitempty"`
	Failure   *Failure `json:"failure,omitempty"`
}

// Lease is a held fleet lock. Exactly one of Done or Abandon must be
// called.
type Lease struct {
	c     *Cache
	key   string
	token string
}

// Waiter is registered for a key's outcome; call Wait once.
type Waiter struct {
	c   *Cache
	key string
	ch  chan notice
}

// lockState is the pub/sub listener and the waiters it wakes.
type lockState struct {
	once    sync.Once
	stop    context.CancelFunc
	done    chan struct{}
	ready   chan struct{} // closed once the subscription was confirmed or failed
	mu      sync.Mutex
	waiters map[string]map[*Waiter]struct{}
	closed  bool
}

// Lock tries to take key's fleet lock for hold (a little more than a
// fetch may take). It returns a Lease when this worker must fetch, a
// Waiter when another worker is fetching, or neither when there is no
// shared tier or it failed: then the caller fetches on its own.
func (c *Cache) Lock(ctx context.Context, key string, hold time.Duration) (*Lease, *Waiter) {
	if c.rdb == nil || c.skipRedis() {
		return nil, nil
	}
	c.startListener()
	// Registered before SET NX, so that an answer published right after
	// our attempt is not missed.
	wt := c.register(key)
	if wt == nil {
		return nil, nil
	}
	token := newToken()
	op, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	ok, err := c.rdb.SetNX(op, lockPrefix+key, token, hold).Result()
	if err != nil {
		c.unregister(wt)
		c.redisFailed(ctx, "lock", err)
		return nil, nil
	}
	c.redisOK()
	if ok {
		c.unregister(wt)
		return &Lease{c: c, key: key, token: token}, nil
	}
	return nil, wt
}

// Done publishes the outcome to the waiters and releases the lock. Call
// it after the value was stored, with f nil, or with the failure to pass
// on.
func (l *Lease) Done(ctx context.Context, f *Failure) {
	l.finish(ctx, notice{OK: f == nil, Failure: f})
}

// Abandon releases the lock without an answer (e.g. the worker is
// stopping): the waiters fetch themselves at once instead of waiting out
// their bound.
func (l *Lease) Abandon(ctx context.Context) { l.finish(ctx, notice{Abandoned: true}) }

func (l *Lease) finish(ctx context.Context, n notice) {
	msg, _ := json.Marshal(n)
	// A stopping worker still owes its waiters the notice.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.c.opTimeout)
	defer cancel()
	err := release.Run(ctx, l.c.rdb, []string{lockPrefix + l.key, donePrefix + l.key}, l.token, msg).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		l.c.redisFailed(context.Background(), "unlock", err)
	}
}

// Wait waits at most wait for the holder's answer. It returns nil when the
// caller should fetch itself: the wait ran out, the holder gave up or
// died, the answer could not be read, or ctx ended.
func (w *Waiter) Wait(ctx context.Context, wait time.Duration) *Answer {
	defer w.c.unregister(w)
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	check := time.NewTicker(min(checkEvery, max(wait/4, time.Millisecond)))
	defer check.Stop()
	for {
		select {
		case n := <-w.ch:
			return w.answer(ctx, n)
		case <-check.C:
			body, held, err := w.c.peek(ctx, w.key)
			switch {
			case err != nil:
				return nil // Redis is gone: per-worker singleflight from here
			case body != nil:
				return &Answer{Body: body}
			case !held:
				// The holder's notice leaves with its lock, on another
				// connection: give it a moment before deciding that the
				// holder vanished without a word (an error, which is not
				// cached, would otherwise be fetched again).
				t := time.NewTimer(noticeGrace)
				defer t.Stop()
				select {
				case n := <-w.ch:
					return w.answer(ctx, n)
				case <-t.C:
					return nil // the holder's lock expired or vanished without a word
				}
			}
		case <-deadline.C:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// noticeGrace is how long a waiter that sees the lock gone waits for the
// holder's notice, which may still be on its way.
const noticeGrace = 50 * time.Millisecond

// answer turns the holder's notice into the waiter's answer; nil means
// fetch here.
func (w *Waiter) answer(ctx context.Context, n notice) *Answer {
	switch {
	case n.Failure != nil:
		return &Answer{Failure: n.Failure}
	case n.OK:
		if body, ok := w.c.Get(ctx, w.key); ok {
			return &Answer{Body: body}
		}
		return nil // stored value lost (Redis hiccup): fetch
	default:
		return nil // abandoned
	}
}

// peek reads key's value and whether its lock is still held.
func (c *Cache) peek(ctx context.Context, key string) ([]byte, bool, error) {
	if b, ok := c.Local(key); ok {
		return b, true, nil
	}
	op, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	var lock *redis.IntCmd
	var get *redis.StringCmd
	_, err := c.rdb.Pipelined(op, func(p redis.Pipeliner) error {
		lock = p.Exists(op, lockPrefix+key)
		get = p.Get(op, key)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		c.redisFailed(ctx, "lock_check", err)
		return nil, false, err
	}
	c.redisOK()
	if get.Err() == nil {
		// Through Get, so that the memory tier takes the entry with its
		// remaining TTL.
		if b, ok := c.Get(ctx, key); ok {
			return b, true, nil
		}
	}
	return nil, lock.Val() > 0, nil
}

func (c *Cache) register(key string) *Waiter {
	s := &c.lock
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	w := &Waiter{c: c, key: key, ch: make(chan notice, 1)}
	if s.waiters == nil {
		s.waiters = map[string]map[*Waiter]struct{}{}
	}
	if s.waiters[key] == nil {
		s.waiters[key] = map[*Waiter]struct{}{}
	}
	s.waiters[key][w] = struct{}{}
	return w
}

// Waiting is how many of this Cache's callers are registered to wait for
// another worker's answer for key.
func (c *Cache) Waiting(key string) int {
	s := &c.lock
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.waiters[key])
}

func (c *Cache) unregister(w *Waiter) {
	s := &c.lock
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.waiters[w.key]; m != nil {
		delete(m, w)
		if len(m) == 0 {
			delete(s.waiters, w.key)
		}
	}
}

func (c *Cache) deliver(key string, n notice) {
	s := &c.lock
	s.mu.Lock()
	defer s.mu.Unlock()
	for w := range s.waiters[key] {
		select {
		case w.ch <- n:
		default: // already has one; each waiter needs only the first
		}
	}
}

// startListener starts the one pub/sub subscription of this Cache the
// first time a lock is asked for; Close stops it.
func (c *Cache) startListener() {
	s := &c.lock
	s.once.Do(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed {
			return
		}
		ctx, stop := context.WithCancel(context.Background())
		s.stop, s.done, s.ready = stop, make(chan struct{}), make(chan struct{})
		go c.listen(ctx, s.ready, s.done)
	})
	// The first lock waits for the subscription, or a waiter registered
	// now would miss the answer and fall back to its periodic check.
	if s.ready != nil {
		select {
		case <-s.ready:
		case <-time.After(c.opTimeout):
		}
	}
}

func (c *Cache) listen(ctx context.Context, ready, done chan<- struct{}) {
	defer close(done)
	ps := c.rdb.PSubscribe(ctx, donePrefix+"*")
	defer ps.Close()
	rctx, cancel := context.WithTimeout(ctx, c.opTimeout)
	if _, err := ps.Receive(rctx); err != nil {
		c.redisFailed(ctx, "subscribe", err)
	}
	cancel()
	close(ready)
	// go-redis re-subscribes after a reconnect; notices sent meanwhile
	// are lost, which the waiters' periodic check covers.
	ch := ps.Channel(redis.WithChannelHealthCheckInterval(5 * time.Second))
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			var n notice
			if err := json.Unmarshal([]byte(m.Payload), &n); err != nil {
				c.log.Warn("ignoring a malformed fleet-lock notice", zap.String("channel", m.Channel))
				continue
			}
			c.deliver(strings.TrimPrefix(m.Channel, donePrefix), n)
		}
	}
}

// Close stops the fleet-lock listener. Waiters still waiting run out
// their bound or see the lock go; the cache itself stays usable.
func (c *Cache) Close() error {
	s := &c.lock
	s.mu.Lock()
	s.closed = true
	stop, done := s.stop, s.done
	s.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	return nil
}

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
