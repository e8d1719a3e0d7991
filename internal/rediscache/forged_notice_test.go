package rediscache

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// reasons counts what a reject hook is told.
type reasons struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *reasons) hook(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[reason]++
}

func (r *reasons) get(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

// TestForgedNoticeIgnored: with a cache key, someone who can write to
// Redis plants a key's lock and publishes failures on its channel, as the
// issue's attack did. No waiter answers them: they go on waiting, and
// fetch themselves when the wait runs out. A notice a worker of the
// fleet signed is answered, but not when replayed on another key's
// channel, nor later on its own.
func TestForgedNoticeIgnored(t *testing.T) {
	rd := testenv.StartRedis(t)
	rdb := rd.Client(t)
	ctx := context.Background()
	secret := []byte("fleet secret")
	var skew atomic.Int64 // added to the waiting worker's clock
	var ignored reasons
	waiting := New(rd.Client(t), WithCacheKey(secret), WithRejectHook(ignored.hook),
		WithClock(func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }))
	t.Cleanup(waiting.Close)
	holding := New(rd.Client(t), WithCacheKey(secret))
	t.Cleanup(holding.Close)
	const key, other = "regcap:v2:manifest_digest:example.test/app:v1", "regcap:v2:manifest_digest:example.test/other:v1"
	forged := notice{Failure: &contract.Error{Code: 404, Message: "example.test/app:v1: forged"}}

	// The attack: a planted lock, then forged failures, each ignored.
	testenv.Must(t, rdb.SetNX(ctx, lockKey(key), "attacker", time.Minute).Err(), "planting the lock")
	w := waiting.Lock(ctx, key, time.Minute, time.Time{})
	if w.Waiter == nil {
		t.Fatalf("Lock on a planted lock: %+v, want a waiter", w)
	}
	for _, p := range [][]byte{
		sealNotice(doneChannel(key), forged, nil, time.Now()),
		sealNotice(doneChannel(key), forged, []byte("guessed"), time.Now()),
		sealNotice(doneChannel(other), forged, secret, time.Now()),
		[]byte(`{"failure":{"code":-1,"message":"crash the front"}}`),
	} {
		testenv.Must(t, rdb.Publish(ctx, doneChannel(key), p).Err(), "publishing")
	}
	// The lock stays planted: the wait runs out, and the caller fetches.
	if v := w.Waiter.Wait(ctx, 300*time.Millisecond); v != nil {
		t.Fatalf("waiter answered %+v after forged notices; want nil (fetch yourself)", v)
	}
	testenv.Eventually(t, "the forged notices counted", func() bool {
		return ignored.get(noticeUnsigned) == 2 && ignored.get(noticeSignature) == 2
	})

	// A notice the fleet signed is answered, and the forged ones sent
	// before it do not take its place.
	testenv.Must(t, rdb.Del(ctx, lockKey(key)).Err(), "removing the planted lock")
	sub := rdb.Subscribe(ctx, doneChannel(key))
	defer sub.Close()
	_, err := sub.Receive(ctx)
	testenv.Must(t, err, "subscribing")
	lease := holding.Lock(ctx, key, time.Minute, time.Time{})
	w = waiting.Lock(ctx, key, time.Minute, time.Time{})
	if lease.Lease == nil || w.Waiter == nil {
		t.Fatalf("want a lease and a waiter, got %+v and %+v", lease, w)
	}
	testenv.Must(t, rdb.Publish(ctx, doneChannel(key), sealNotice(doneChannel(key), forged, nil, time.Now())).Err(), "publishing")
	lease.Lease.Fail(ctx, &contract.Error{Code: 502, Message: "example.test/app:v1: registry said 500"})
	v := w.Waiter.Wait(ctx, 10*time.Second)
	if v == nil || v.Failure == nil || v.Failure.Code != 502 || v.Failure.Message != "example.test/app:v1: registry said 500" {
		t.Fatalf("waiter's verdict %+v, want the holder's signed failure", v)
	}
	var genuine string // the holder's notice, after the forged one
	for !strings.HasPrefix(genuine, noticeSigned) {
		m, err := sub.ReceiveMessage(ctx)
		testenv.Must(t, err, "capturing the holder's notice")
		genuine = m.Payload
	}

	// The genuine notice, replayed: on another key's channel, and on its
	// own a minute later.
	for _, replay := range []struct {
		key    string
		skew   time.Duration
		reason string
	}{
		{other, 0, noticeSignature},
		{key, time.Minute, noticeDate},
	} {
		skew.Store(int64(replay.skew))
		testenv.Must(t, rdb.SetNX(ctx, lockKey(replay.key), "attacker", time.Minute).Err(), "planting the lock")
		w := waiting.Lock(ctx, replay.key, time.Minute, time.Time{})
		if w.Waiter == nil {
			t.Fatalf("Lock on a planted lock: %+v, want a waiter", w)
		}
		before := ignored.get(replay.reason)
		testenv.Must(t, rdb.Publish(ctx, doneChannel(replay.key), genuine).Err(), "replaying")
		testenv.Eventually(t, "the replay ignored as "+replay.reason, func() bool { return ignored.get(replay.reason) > before })
		if v := w.Waiter.Wait(ctx, 300*time.Millisecond); v != nil {
			t.Fatalf("replay on %s, %v later: waiter answered %+v", replay.key, replay.skew, v)
		}
		testenv.Must(t, rdb.Del(ctx, lockKey(replay.key)).Err(), "removing the planted lock")
	}
}
