package rediscache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/regcap/regcap/contract"
)

// The fleet lock. A worker that misses takes lockPrefix+key with SET NX PX
// and a random token; the others wait for its answer. The holder stores
// the value, then, if it still holds the lock, publishes the outcome on
// donePrefix+key and deletes the lock, all in one script so that no
// waiter can see the lock gone before the notification is sent. A worker
// that finds the lock held marks waitPrefix+key in the same script: the
// holder publishes only when someone waits (a miss nobody shares costs
// the fleet's listeners nothing), and its "ok" then carries the value,
// so that the waiters answer without reading it. A holder
// whose lock expired says nothing: the waiters are then another holder's,
// and its outcome (or its failure) is not theirs to act on; they see the
// value, or the lock gone, at their periodic check.
//
// Notifications use Redis pub/sub rather than a NATS subject: the lock,
// the value and the wake-up then live in one system, so there is no window
// where one is reachable and the other is not, and a Redis outage turns
// the whole mechanism off at once (every worker falls back to its own
// singleflight). Each fleetLock holds one PSUBSCRIBE connection for all
// keys, not one per waiting key. Anyone who can write to Redis can also
// publish: with a cache key, notices are signed (notice.go), and a forged
// one is ignored, so that it can delay a waiter but not answer it.
//
// A refused SET NX (Redis out of memory, read-only) is no lock and no
// outage: the worker fetches on its own, and Redis stays in use for reads.
const (
	lockPrefix = "regcap:lock:"
	donePrefix = "regcap:done:"
	waitPrefix = "regcap:wait:"
)

// maxCarried bounds the value an "ok" notice carries: every worker's
// listener receives every notice, so a larger value is left for its
// waiters to read.
const maxCarried = 64 << 10

// lockKey and doneChannel wrap the value's key in a Redis Cluster hash
// tag: the lock, the value and the notice then hash to one slot, so that
// the release script (which names the lock and the channel) and the
// pipelines that touch the lock and the value run in Cluster mode too.
// Value keys hold no braces (references cannot), so the tag is the whole
// key, and its slot the value's.
func lockKey(key string) string { return lockPrefix + "{" + key + "}" }

// LockKey is the Redis key of key's fleet lock, for tools and tests that
// look into Redis.
func LockKey(key string) string     { return lockKey(key) }
func doneChannel(key string) string { return donePrefix + "{" + key + "}" }
func waitKey(key string) string     { return waitPrefix + "{" + key + "}" }

// keyOfChannel is the value key a notice channel is about.
func keyOfChannel(ch string) string {
	return strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(ch, donePrefix), "{"), "}")
}

// checkEvery is how often a waiter looks at the value and the lock itself,
// in case a notification was lost (pub/sub is at most once, e.g. across a
// Redis reconnect) or the holder died and its lock was removed. It is a
// safety net, not the wake-up path.
const checkEvery = 250 * time.Millisecond

// releaseScript stores the value (when there is one), then, only if the
// token still owns the lock, deletes it and, when a waiter marked the
// key, publishes the outcome. A holder whose lock expired still stores
// its fresh value, but must neither delete another worker's lock nor
// wake that worker's waiters: a notice of its failure, or of its giving
// up, would make them fail or fetch while the new holder's fetch is
// under way.
//
// KEYS: the lock, the notice channel, the value, the waiters' mark (one
// Cluster slot, see lockKey). ARGV: the token, the notice, the sealed
// value ("" for none), its PX, and "1" when the notice may carry it. It
// returns {stored, released, refusal}: the SET is run with pcall, so that
// a refused write (out of memory, read-only) still releases the lock, and
// then the value is not carried: the waiters, told "ok", read and find no
// fresh value, and fetch themselves.
var releaseScript = redis.NewScript(`
local stored, refusal = 0, ""
if ARGV[3] ~= "" then
	local ok = redis.pcall("SET", KEYS[3], ARGV[3], "PX", ARGV[4])
	if type(ok) == "table" and ok.err then
		refusal = ok.err
	else
		stored = 1
	end
end
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
	return {stored, 0, refusal}
end
redis.call("DEL", KEYS[1])
if redis.call("DEL", KEYS[4]) == 1 then
	if stored == 1 and ARGV[5] == "1" then
		redis.call("PUBLISH", KEYS[2], ARGV[2] .. "\n" .. ARGV[3])
	else
		redis.call("PUBLISH", KEYS[2], ARGV[2])
	end
end
return {stored, 1, refusal}
`)

// Verdict is what a waiter learned from the holder: its answer, read from
// Redis, or its error. Exactly one field is set.
type Verdict struct {
	Found   Entry
	Failure *contract.Error
}

// Claim is the outcome of asking for a key's lock: exactly one of Lease,
// Waiter and Found is set, or none when Redis is not working (then the caller
// fetches on its own).
type Claim struct {
	Lease  *Lease  // this worker holds the lock and must fetch
	Waiter *Waiter // another worker holds it
	Found  *Entry  // the answer was stored meanwhile
	// Stale is the value kept past its freshness (--stale-if-error),
	// read in the same round trip, beside a Lease or a Waiter
	// (GetOrLock only).
	Stale *Entry
}

// Lease is a held fleet lock. Exactly one of Store, Fail or Abandon must
// be called.
type Lease struct {
	l     *fleetLock
	key   string
	token string
}

// Waiter is registered for a key's outcome; call Wait once.
type Waiter struct {
	l   *fleetLock
	key string
	ch  chan notice
}

// fleetLock lets one worker of a fleet fetch a key while the others wait
// for its answer. It holds one pub/sub listener, started by the first
// Lock, and the waiters it wakes.
type fleetLock struct {
	c *Cache // where the holder's answer is read

	once    sync.Once
	stop    context.CancelFunc
	done    chan struct{}
	ready   chan struct{} // closed once the subscription was confirmed or failed
	mu      sync.Mutex
	waiters map[string]map[*Waiter]struct{}
	closed  bool
}

// Lock tries to take key's fleet lock for hold (a little more than a
// fetch may take), and reads key's value in the same round trip: the
// holder before us may have stored it since the caller's look. A value
// counts as found when it is fresh and was fetched after newerThan (a
// refresh looks for one newer than the entry it refreshes).
func (c *Cache) Lock(ctx context.Context, key string, hold time.Duration, newerThan time.Time) Claim {
	return c.lock.Lock(ctx, key, hold, newerThan)
}

// Waiters is how many of this worker's requests wait on another worker's
// fetch of key.
func (c *Cache) Waiters(key string) int {
	c.lock.mu.Lock()
	defer c.lock.mu.Unlock()
	return len(c.lock.waiters[key])
}

// Lock is Cache.Lock: the get-or-lock script, told to take the lock
// whatever the value, so that a caller that finds the lock held marks
// the key in the same round trip, as a miss does.
func (l *fleetLock) Lock(ctx context.Context, key string, hold time.Duration, newerThan time.Time) Claim {
	c := l.c
	if len(key) > MaxKeyLen || c.health.skip(ctx, key) {
		return Claim{}
	}
	l.startListener()
	// Registered before the script, so that an answer published right
	// after it is not missed.
	wt := l.register(key)
	if wt == nil {
		return Claim{}
	}
	token := newToken()
	op, cancel := c.health.op(ctx)
	defer cancel()
	res, err := getOrLockScript.Run(op, c.rdb, []string{key, lockKey(key), waitKey(key)},
		c.maxValue(), token, hold.Milliseconds(), "1").Slice()
	if err != nil {
		l.unregister(wt)
		c.settle(ctx, key, "lock", err)
		return Claim{}
	}
	c.health.ok(ctx, key)
	value, pttl, state, wrong, refusal := scriptResult(res)
	var e Entry
	var found bool
	if wrong {
		c.rejected(key, &rejection{rejectWrongType, "the key holds another type than a string"})
	} else {
		e, found = c.decodeValue(key, value, pttl)
	}
	// A stale value (kept for --stale-if-error) is no answer here: the
	// lock is for fetching a fresh one.
	found = found && e.IsFresh(c.now()) && e.Fetched.After(newerThan)
	switch {
	case state != 1 && state != 2:
		// Redis refused the lock (out of memory, read-only): nobody
		// holds it, so nobody would answer a waiter. Fetch here.
		l.unregister(wt)
		c.settle(ctx, key, "lock", scriptRefusal(refusal))
		if found {
			return Claim{Found: &e}
		}
		return Claim{}
	case state == 1 && found:
		// Stored between the caller's look and our lock: nothing to
		// fetch, and nobody to keep waiting.
		l.unregister(wt)
		(&Lease{l: l, key: key, token: token}).finish(ctx, notice{OK: true}, nil)
		return Claim{Found: &e}
	case state == 1:
		l.unregister(wt)
		return Claim{Lease: &Lease{l: l, key: key, token: token}}
	case found:
		l.unregister(wt)
		return Claim{Found: &e}
	}
	return Claim{Waiter: wt}
}

// Store stores e under the key, publishes success to the waiters and
// releases the lock, in one round trip.
func (ls *Lease) Store(ctx context.Context, e Entry) { ls.finish(ctx, notice{OK: true}, &e) }

// Fail passes err to the waiters and releases the lock. Errors are not
// cached.
func (ls *Lease) Fail(ctx context.Context, err *contract.Error) {
	ls.finish(ctx, notice{Failure: err}, nil)
}

// Abandon releases the lock without an answer (e.g. the worker is
// stopping): the waiters fetch themselves at once instead of waiting out
// their bound.
func (ls *Lease) Abandon(ctx context.Context) { ls.finish(ctx, notice{Abandoned: true}, nil) }

func (ls *Lease) finish(ctx context.Context, n notice, store *Entry) {
	l := ls.l
	channel := doneChannel(ls.key)
	var value []byte
	var px int64
	if store != nil {
		if left := store.Expires.Sub(l.c.now()); left >= time.Millisecond {
			value, px = sealEntry(ls.key, *store, l.c.macKey), left.Milliseconds()
			n.Fetched, n.Expires = store.Fetched.UnixNano(), store.Expires.UnixNano()
		}
	}
	carry := "0"
	if len(value) <= maxCarried {
		carry = "1"
	}
	msg := sealNotice(channel, n, l.c.macKey, l.c.now())
	// A stopping worker still owes its waiters the notice.
	ctx, cancel := l.c.health.op(context.WithoutCancel(ctx))
	defer cancel()
	res, err := releaseScript.Run(ctx, l.c.rdb, []string{lockKey(ls.key), channel, ls.key, waitKey(ls.key)},
		ls.token, msg, value, px, carry).Slice()
	if err != nil {
		if !isReply(err) {
			l.c.health.failed(context.Background(), ls.key, "unlock", err)
			return
		}
		l.c.settle(context.Background(), ls.key, "unlock", err)
		return
	}
	l.c.health.ok(ctx, ls.key)
	// A refused SET (out of memory) is counted apart from the release,
	// which went through.
	if value != nil {
		var setErr error
		if len(res) > 2 {
			if r, _ := res[2].(string); r != "" {
				setErr = scriptRefusal(r)
			}
		}
		l.c.settle(context.Background(), ls.key, "set", setErr)
	}
}

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
