package rediscache

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestExpiredHolderSaysNothing: a holder whose lock expired and was taken
// by another worker neither deletes the new lock nor notifies: the
// waiters get the new holder's answer, not the stale one.
func TestExpiredHolderSaysNothing(t *testing.T) {
	rd := testenv.StartRedis(t)
	newLock := func() *Cache {
		c := New(rd.Client(t))
		t.Cleanup(c.Close)
		return c
	}
	stale, fresh, waiting := newLock(), newLock(), newLock()
	rdb := rd.Client(t)
	ctx := context.Background()
	const key = "regcap:v2:manifest_digest:example.test/app:v1"

	old := stale.Lock(ctx, key, 50*time.Millisecond, time.Time{})
	if old.Lease == nil {
		t.Fatal("the first Lock did not take the lock")
	}
	testenv.Eventually(t, "the first lock expired", func() bool {
		return rdb.Exists(ctx, lockKey(key)).Val() == 0
	})
	cur := fresh.Lock(ctx, key, time.Minute, time.Time{})
	if cur.Lease == nil {
		t.Fatal("the second Lock did not take the expired lock")
	}
	w := waiting.Lock(ctx, key, time.Minute, time.Time{})
	if w.Waiter == nil {
		t.Fatal("the third Lock did not wait")
	}

	// Published first, the stale notice would be the waiter's answer:
	// each waiter keeps only the first notice it receives.
	old.Lease.Fail(ctx, &contract.Error{Code: 404, Message: "stale holder"})
	if rdb.Exists(ctx, lockKey(key)).Val() != 1 {
		t.Fatal("the expired holder deleted the new holder's lock")
	}
	cur.Lease.Fail(ctx, &contract.Error{Code: 502, Message: "current holder"})
	v := w.Waiter.Wait(ctx, 20*time.Second)
	if v == nil || v.Failure == nil || v.Failure.Message != "current holder" {
		t.Fatalf("waiter's verdict %+v, want the current holder's failure", v)
	}
}

// TestCallerCancelIsNotAnOutage: a Redis command cut short by its
// caller's context says nothing about Redis; a stopped Redis does.
func TestCallerCancelIsNotAnOutage(t *testing.T) {
	rd := testenv.StartRedis(t)
	var errs []string
	var mu sync.Mutex
	r := New(rd.Client(t), WithErrorHook(func(op string) {
		mu.Lock()
		errs = append(errs, op)
		mu.Unlock()
	}))
	t.Cleanup(r.Close)
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(errs) }
	bg := context.Background()
	done, cancel := context.WithCancel(bg)
	cancel()
	r.Set(bg, "k", Entry{Body: []byte("v"), Fresh: time.Now().Add(time.Minute), Expires: time.Now().Add(time.Minute)})
	for _, op := range []struct {
		name string
		do   func()
	}{
		{"get", func() { r.Get(done, "k") }},
		{"set", func() {
			r.Set(done, "k2", Entry{Body: []byte("v"), Fresh: time.Now().Add(time.Minute), Expires: time.Now().Add(time.Minute)})
		}},
		{"lock", func() { r.Lock(done, "k3", time.Second, time.Time{}) }},
	} {
		op.do()
		if !r.Available() || count() != 0 {
			t.Fatalf("%s with a cancelled context: available %v, errors %v", op.name, r.Available(), errs)
		}
	}
	if e, ok := r.Get(bg, "k"); !ok || string(e.Body) != "v" {
		t.Fatalf("after cancelled commands: %q %v", e.Body, ok)
	}
	rd.Stop()
	r.Get(bg, "k")
	if r.Available() || count() == 0 {
		t.Fatalf("redis stopped: available %v, errors %v", r.Available(), errs)
	}
}
