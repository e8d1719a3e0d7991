package rediscache

import (
	"context"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testenv"
)

// TestMaxTTLBoundsFreshness: a Redis writer replays validly signed
// values under a long expiry of its own. Freshness follows the fetch
// time each value signs, not the expiry: older than the TTL is not
// fresh, older than the TTL and its stale span is not served at all, and
// the memory tier, given what Redis answered, follows.
func TestMaxTTLBoundsFreshness(t *testing.T) {
	rd := testenv.StartRedis(t)
	rdb := rd.Client(t)
	ctx := context.Background()
	secret := []byte("fleet secret")
	const ttl, negativeTTL = time.Minute, 10 * time.Second
	var rejected reasons
	c := New(rd.Client(t), WithCacheKey(secret), WithMaxTTL(ttl, negativeTTL), WithRejectHook(rejected.hook))
	t.Cleanup(c.Close)
	now := time.Now()
	plant := func(key string, e Entry) {
		t.Helper()
		testenv.Must(t, rdb.Set(ctx, key, sealEntry(key, e, secret), time.Hour).Err(), "planting %s", key)
	}

	// Fetched two TTLs ago, no stale span: gone, whatever the expiry.
	old := "regcap:v2:manifest_digest:example.test/old:v1"
	plant(old, Entry{Body: []byte("old"), Fetched: now.Add(-2 * ttl), Fresh: now.Add(-ttl), Expires: now.Add(-ttl)})
	if e, ok := c.Get(ctx, old); ok {
		t.Fatalf("a value fetched two TTLs ago, expiring in an hour: served as %+v", e)
	}
	if rejected.get(rejectExpired) != 1 {
		t.Fatalf("rejections %v, want one %s", rejected.n, rejectExpired)
	}
	if claim := c.Lock(ctx, old, time.Minute, time.Time{}); claim.Lease == nil {
		t.Fatalf("Lock on the replayed value: %+v, want a lease (fetch)", claim)
	}

	// Fetched two TTLs ago with an hour's stale span: stale, not fresh.
	stale := "regcap:v2:manifest_digest:example.test/stale:v1"
	plant(stale, Entry{Body: []byte("stale"), Fetched: now.Add(-2 * ttl), Fresh: now.Add(-ttl), Expires: now.Add(-ttl + time.Hour)})
	e, ok := c.Get(ctx, stale)
	if !ok || e.IsFresh(time.Now()) || !e.Fresh.Equal(now.Add(-ttl)) || !e.Expires.Equal(now.Add(-ttl+time.Hour)) {
		t.Fatalf("a value fetched two TTLs ago with a stale span: %+v %v; want stale until fetch+TTL+span", e, ok)
	}

	// Fetched now, expiring in an hour: fresh no longer than the TTL.
	fresh := "regcap:v2:manifest_digest:example.test/fresh:v1"
	plant(fresh, Entry{Body: []byte("fresh"), Fetched: now, Fresh: now.Add(time.Hour), Expires: now.Add(time.Hour)})
	e, ok = c.Get(ctx, fresh)
	if !ok || !e.IsFresh(time.Now()) || e.Fresh.After(now.Add(ttl)) || e.Expires.After(now.Add(ttl)) {
		t.Fatalf("a value fetched now, expiring in an hour: %+v %v; want fresh until fetch+TTL at most", e, ok)
	}
	m := NewMemory(1<<20, func() time.Time { return now.Add(ttl + time.Second) })
	m.Set(fresh, e)
	if got, ok := m.Get(fresh); ok {
		t.Fatalf("memory tier, a second past the TTL: %+v", got)
	}

	// A cached 404 follows its own, shorter TTL.
	negative := "regcap:v2:manifest_digest:example.test/gone:v1"
	plant(negative, Entry{Body: []byte("not found"), Fetched: now.Add(-2 * negativeTTL), Fresh: now.Add(time.Hour), Expires: now.Add(time.Hour), Negative: true})
	if e, ok := c.Get(ctx, negative); ok {
		t.Fatalf("a 404 cached two negative TTLs ago, expiring in an hour: served as %+v", e)
	}
	plant(negative, Entry{Body: []byte("not found"), Fetched: now, Fresh: now.Add(time.Hour), Expires: now.Add(time.Hour), Negative: true})
	if e, ok := c.Get(ctx, negative); !ok || !e.Negative || e.Expires.After(now.Add(negativeTTL)) {
		t.Fatalf("a 404 cached now, expiring in an hour: %+v %v; want it until fetch+negative TTL at most", e, ok)
	}

	// Without WithMaxTTL, the key's expiry decides, as before.
	trusting := New(rd.Client(t), WithCacheKey(secret))
	t.Cleanup(trusting.Close)
	if e, ok := trusting.Get(ctx, old); !ok || !e.IsFresh(time.Now()) {
		t.Fatalf("without a max TTL: %+v %v, want the expiry trusted", e, ok)
	}
}
