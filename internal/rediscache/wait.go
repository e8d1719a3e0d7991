package rediscache

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cancel gives up waiting without waiting: a refresh that finds another
// worker refreshing leaves it to them.
func (w *Waiter) Cancel() { w.l.unregister(w) }

// Wait waits at most wait for the holder's answer. It returns nil when the
// caller should fetch itself: the wait ran out, the holder gave up or
// died, the answer could not be read, or ctx ended.
func (w *Waiter) Wait(ctx context.Context, wait time.Duration) *Verdict {
	defer w.l.unregister(w)
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	check := time.NewTicker(min(checkEvery, max(wait/4, time.Millisecond)))
	defer check.Stop()
	for {
		select {
		case n := <-w.ch:
			return w.answer(ctx, n)
		case <-check.C:
			e, found, held, err := w.l.peek(ctx, w.key)
			switch {
			case err != nil:
				return nil // Redis is gone: per-worker singleflight from here
			case found:
				return &Verdict{Found: e}
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

// answer turns the holder's notice into the waiter's verdict; nil means
// fetch here.
func (w *Waiter) answer(ctx context.Context, n notice) *Verdict {
	switch {
	case n.Failure != nil:
		return &Verdict{Failure: n.Failure}
	case n.OK:
		c := w.l.c
		// The value came with the notice: no read. It is the one the
		// notice describes, or it is read from Redis after all (and one
		// that expired on the way is read too, not counted as refused).
		if now := c.now(); n.value != "" && now.Before(time.Unix(0, n.Expires)) {
			if e, ok := c.decodeValue(w.key, n.value, time.Unix(0, n.Expires).Sub(now)); ok &&
				e.Fetched.UnixNano() == n.Fetched && e.IsFresh(now) {
				return &Verdict{Found: e}
			}
		}
		// Fresh only: the holder's notice also goes out when its SET did
		// not land, and the value then is the old, stale one.
		if e, ok := c.Get(ctx, w.key); ok && e.IsFresh(c.now()) {
			return &Verdict{Found: e}
		}
		return nil // stored value lost (Redis hiccup): fetch
	default:
		return nil // abandoned
	}
}

// peek reads key's value and whether its lock is still held.
func (l *fleetLock) peek(ctx context.Context, key string) (e Entry, found, held bool, err error) {
	op, cancel := l.c.health.op(ctx)
	defer cancel()
	var (
		lock *redis.IntCmd
		get  *redis.StringCmd
		ttl  *redis.DurationCmd
	)
	_, err = l.c.rdb.Pipelined(op, func(p redis.Pipeliner) error {
		lock = p.Exists(op, lockKey(key))
		get, ttl = l.c.read(op, p, key)
		return nil
	})
	if err != nil && !isReply(err) {
		l.c.health.failed(ctx, key, "lock_check", err)
		return Entry{}, false, false, err
	}
	l.c.health.ok(ctx, key)
	e, found = l.c.decode(key, get, ttl)
	return e, found && e.IsFresh(l.c.now()), lock.Val() > 0, nil
}

func (l *fleetLock) register(key string) *Waiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	w := &Waiter{l: l, key: key, ch: make(chan notice, 1)}
	if l.waiters == nil {
		l.waiters = map[string]map[*Waiter]struct{}{}
	}
	if l.waiters[key] == nil {
		l.waiters[key] = map[*Waiter]struct{}{}
	}
	l.waiters[key][w] = struct{}{}
	return w
}

func (l *fleetLock) unregister(w *Waiter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := l.waiters[w.key]; m != nil {
		delete(m, w)
		if len(m) == 0 {
			delete(l.waiters, w.key)
		}
	}
}

func (l *fleetLock) deliver(key string, n notice) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for w := range l.waiters[key] {
		select {
		case w.ch <- n:
		default: // already has one; each waiter needs only the first
		}
	}
}
