package rediscache

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// getOrLockScript reads a key's value and, unless it is fresh, takes the
// key's fleet lock, in one round trip: what a miss needs before deciding
// to fetch, wait, or answer. KEYS: the value, its lock and its waiters'
// mark (one Cluster slot, see lockKey): a caller that finds the lock
// held marks the key for as long as the lock may still be held, so that
// the holder's release publishes its outcome (releaseScript). ARGV: the
// GETRANGE end (the largest envelope), the lock's token, its hold in
// milliseconds, and "1" to take the lock whatever the value (Lock: a
// refresh, or a value the envelope refused).
//
// It returns {value, pttl, state[, refusal]}: state 0 when the value
// looked fresh (no lock taken), 1 when this caller took the lock, 2 when
// another holds it, 3 when Redis refused the lock's SET (refusal says
// why). A value key of another type reads as "" with state 4 added to
// the lock's outcome as a fourth element.
//
// Freshness is read from the envelope's unsigned stale span (bytes 12 to
// 19): the value is fresh while its PTTL exceeds it, as Entry.IsFresh
// sees it. That is only the script's guess: the caller checks the
// envelope (checksum, MAC, size, --max-ttl) and, when it refuses a value
// the script thought fresh, takes the lock in a second round trip; a
// forged value can cost a round trip, never an answer.
//
// The value is read with pcall, so that a key of another type is a
// refused value and still lets the lock be taken; the SET with pcall, so
// that a refused write (out of memory, read-only) still returns the value
// read. Without a shebang, Redis checks out-of-memory at the first write,
// not before the script runs: the read goes on whatever the memory.
var getOrLockScript = redis.NewScript(`
local v = redis.pcall("GETRANGE", KEYS[1], 0, ARGV[1])
local wrong = 0
if type(v) == "table" then
	wrong = 1
	v = ""
end
local ttl = redis.call("PTTL", KEYS[1])
if ARGV[4] ~= "1" and wrong == 0 and ttl > 0 and #v >= 20 and string.sub(v, 1, 3) == "rc\1" then
	local stale = 0
	for i = 13, 20 do
		stale = stale * 256 + string.byte(v, i)
	end
	if ttl * 1000000 > stale then
		return {v, ttl, 0, wrong}
	end
end
local ok = redis.pcall("SET", KEYS[2], ARGV[2], "NX", "PX", ARGV[3])
if type(ok) == "table" and ok.err then
	return {v, ttl, 3, wrong, ok.err}
end
if ok then
	return {v, ttl, 1, wrong}
end
local held = redis.call("PTTL", KEYS[2])
redis.pcall("SET", KEYS[3], "1", "PX", math.max(tonumber(ARGV[3]), held))
return {v, ttl, 2, wrong}
`)

// scriptRefusal is an error reply a script caught with pcall, passed on
// as go-redis passes a command's error reply.
type scriptRefusal string

func (e scriptRefusal) Error() string { return string(e) }
func (scriptRefusal) RedisError()     {}

// GetOrLock is what a miss asks Redis before fetching, in one round trip
// (one script): key's fresh value (Found); or, when there is none, key's
// fleet lock (Lease) or the holder's answer to come (Waiter), with the
// value kept past its freshness, if any (Stale). No field set: Redis is
// not working, fetch here. Values are checked as Get checks them.
func (c *Cache) GetOrLock(ctx context.Context, key string, hold time.Duration) Claim {
	return c.lock.getOrLock(ctx, key, hold)
}

func (l *fleetLock) getOrLock(ctx context.Context, key string, hold time.Duration) Claim {
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
		c.maxValue(), token, hold.Milliseconds(), "0").Slice()
	if err != nil {
		l.unregister(wt)
		// An error reply to the whole script (BUSY, NOPERM on EVAL) is a
		// refusal, not an outage.
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
	fresh := found && e.IsFresh(c.now())
	var stale *Entry
	if found && !fresh {
		stale = &e
	}
	switch state {
	case 0:
		l.unregister(wt)
		if fresh {
			return Claim{Found: &e}
		}
		// The script took for fresh a value the envelope refuses, or
		// that --max-ttl ends: lock in a second round trip, as before.
		cl := l.Lock(ctx, key, hold, time.Time{})
		if cl.Found == nil && stale != nil {
			cl.Stale = stale
		}
		return cl
	case 1:
		l.unregister(wt)
		return Claim{Lease: &Lease{l: l, key: key, token: token}, Stale: stale}
	case 2:
		return Claim{Waiter: wt, Stale: stale}
	default:
		// Redis refused the lock (out of memory, read-only): nobody
		// holds it, so nobody would answer a waiter. Fetch here; the
		// value read still answers if stale is all there is.
		l.unregister(wt)
		c.settle(ctx, key, "lock", scriptRefusal(refusal))
		return Claim{Stale: stale}
	}
}

// scriptResult unpacks getOrLockScript's reply; a malformed one (it
// cannot be, short of another script under our SHA) reads as a lock
// refused.
func scriptResult(res []any) (value string, pttl time.Duration, state int64, wrong bool, refusal string) {
	state = 3
	refusal = "malformed get-or-lock reply"
	if len(res) < 4 {
		return
	}
	value, _ = res[0].(string)
	ms, _ := res[1].(int64)
	st, ok := res[2].(int64)
	w, _ := res[3].(int64)
	if !ok {
		return
	}
	if len(res) > 4 {
		refusal, _ = res[4].(string)
	}
	switch ms {
	case -2, -1:
		pttl = time.Duration(ms) // as go-redis passes PTTL's -2 and -1
	default:
		pttl = time.Duration(ms) * time.Millisecond
	}
	return value, pttl, st, w != 0, refusal
}
