package rediscache

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testenv"
)

// TestGetOrLock: the one script a miss runs before fetching answers
// what the value's state calls for, and checks the value as Get does: a
// fresh value is found without taking the lock; a missing, stale, refused
// or mistyped one takes the lock (with the stale one passed back); a lock
// held by another makes a waiter; a refused lock still passes back what
// was read.
func TestGetOrLock(t *testing.T) {
	rd := testenv.StartRedis(t)
	ctx := context.Background()
	rdb := rd.Client(t)
	secret := []byte("fleet key")
	var (
		mu      sync.Mutex
		reasons = map[string]int{}
		refused = map[string]int{}
	)
	c := New(rd.Client(t), WithCacheKey(secret),
		WithRejectHook(func(r string) { mu.Lock(); reasons[r]++; mu.Unlock() }),
		WithRefusedHook(func(op, r string) { mu.Lock(); refused[op+" "+r]++; mu.Unlock() }))
	t.Cleanup(c.Close)
	testenv.Must(t, c.Ping(ctx), "ping and script load")
	now := time.Now()
	body := []byte(`{"digest":"sha256:0"}`)
	for _, tc := range []struct {
		name   string
		plant  func(k string) error
		want   string // found, lease, waiter
		stale  bool
		reason string
	}{
		{"missing", func(string) error { return nil }, "lease", false, ""},
		{"fresh", func(k string) error {
			return rdb.Set(ctx, k, EncodeValue(k, body, now, 0, secret), time.Minute).Err()
		}, "found", false, ""},
		{"stale", func(k string) error { // fresh for the first 10 s of its minute, long gone
			return rdb.Set(ctx, k, EncodeValue(k, body, now.Add(-55*time.Second), 50*time.Second, secret), 50*time.Second).Err()
		}, "lease", true, ""},
		{"fresh-looking but unsigned", func(k string) error {
			return rdb.Set(ctx, k, EncodeValue(k, body, now, 0, nil), time.Minute).Err()
		}, "lease", false, rejectUnsigned},
		{"fresh-looking, signed for another key", func(k string) error {
			return rdb.Set(ctx, k, EncodeValue("other", body, now, 0, secret), time.Minute).Err()
		}, "lease", false, rejectSignature},
		{"a list", func(k string) error { return rdb.RPush(ctx, k, "a").Err() }, "lease", false, rejectWrongType},
		{"held by another", func(k string) error { return rdb.Set(ctx, lockKey(k), "someone", time.Minute).Err() }, "waiter", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := "regcap:v2:manifest_digest:example.test/" + tc.name
			testenv.Must(t, tc.plant(k), "planting")
			cl := c.GetOrLock(ctx, k, time.Minute)
			got := ""
			switch {
			case cl.Found != nil:
				got = "found"
			case cl.Lease != nil:
				got = "lease"
				defer cl.Lease.Abandon(ctx)
			case cl.Waiter != nil:
				got = "waiter"
				cl.Waiter.Cancel()
			}
			if got != tc.want || (cl.Stale != nil) != tc.stale {
				t.Fatalf("claim %+v: %s, stale %v; want %s, stale %v", cl, got, cl.Stale != nil, tc.want, tc.stale)
			}
			if got == "found" && string(cl.Found.Body) != string(body) {
				t.Fatalf("found %q", cl.Found.Body)
			}
			if got == "found" && rdb.Exists(ctx, lockKey(k)).Val() != 0 {
				t.Fatal("a fresh value took the lock")
			}
			if tc.reason != "" {
				mu.Lock()
				n := reasons[tc.reason]
				mu.Unlock()
				if n == 0 {
					t.Fatalf("no %s refusal counted: %v", tc.reason, reasons)
				}
			}
		})
	}

	// Out of memory: the script still reads, the lock's SET is refused
	// (counted, no outage), and the stale value comes back to answer with.
	k := "regcap:v2:manifest_digest:example.test/oom"
	testenv.Must(t, rdb.Set(ctx, k, EncodeValue(k, body, now.Add(-55*time.Second), 50*time.Second, secret), 50*time.Second).Err(), "planting")
	testenv.Must(t, rdb.ConfigSet(ctx, "maxmemory", "1").Err(), "maxmemory")
	defer rdb.ConfigSet(ctx, "maxmemory", "0")
	cl := c.GetOrLock(ctx, k, time.Minute)
	if cl.Lease != nil || cl.Waiter != nil || cl.Found != nil || cl.Stale == nil {
		t.Fatalf("claim under OOM %+v: want only the stale value", cl)
	}
	mu.Lock()
	defer mu.Unlock()
	if refused["lock oom"] != 1 || !c.Available() {
		t.Fatalf("refusals %v, available %v: want one lock oom, Redis available", refused, c.Available())
	}
}
