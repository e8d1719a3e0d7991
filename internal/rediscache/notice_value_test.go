package rediscache

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

func entryOf(body string, fetched time.Time) Entry {
	return Entry{Body: []byte(body), Fetched: fetched, Fresh: fetched.Add(time.Minute), Expires: fetched.Add(time.Minute)}
}

// TestNoticeCarriesTheValue: a waiter answers with the value its holder's
// notice carries, without reading Redis, with and without a cache key; a
// value over maxCarried is read instead.
func TestNoticeCarriesTheValue(t *testing.T) {
	rd := testenv.StartRedis(t)
	for _, c := range []struct {
		name string
		key  []byte
		body string
		// reads is what the waiter sends Redis after the notice.
		reads int64
	}{
		{"unsigned", nil, `{"digest":"sha256:0"}`, 0},
		{"signed", []byte("fleet secret"), `{"digest":"sha256:1"}`, 0},
		{"over maxCarried, read", nil, strings.Repeat("x", maxCarried+1), 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			key := "regcap:v2:oci_manifest:example.test/" + strings.ReplaceAll(c.name, " ", "-") + ":v1"
			holder := New(rd.Client(t), WithCacheKey(c.key), WithMaxBody(1<<20))
			t.Cleanup(holder.Close)
			var sent testenv.RoundTrips
			wc := rd.Client(t)
			wc.AddHook(&sent)
			waiter := New(wc, WithCacheKey(c.key), WithMaxBody(1<<20))
			t.Cleanup(waiter.Close)

			held := holder.GetOrLock(ctx, key, time.Minute)
			if held.Lease == nil {
				t.Fatalf("holder: %+v, want the lease", held)
			}
			w := waiter.GetOrLock(ctx, key, time.Minute)
			if w.Waiter == nil {
				t.Fatalf("waiter: %+v, want to wait", w)
			}
			if rd.Client(t).Exists(ctx, waitKey(key)).Val() != 1 {
				t.Fatal("the waiter did not mark the key")
			}
			before := sent.N.Load()
			held.Lease.Store(ctx, entryOf(c.body, time.Now()))
			v := w.Waiter.Wait(ctx, 20*time.Second)
			if v == nil || v.Failure != nil || string(v.Found.Body) != c.body {
				t.Fatalf("verdict %+v, want the holder's value", v)
			}
			if n := sent.N.Load() - before; n != c.reads {
				t.Errorf("the waiter sent %d commands after the notice, want %d", n, c.reads)
			}
			if n := rd.Client(t).Exists(ctx, waitKey(key), lockKey(key)).Val(); n != 0 {
				t.Errorf("%d of the mark and the lock left after the release", n)
			}
		})
	}
}

// TestNoNoticeWithoutWaiters: a holder nobody waits for (a miss or a
// refresh) publishes nothing, so a miss nobody shares costs the fleet's listeners nothing;
// one with a waiter publishes. A subscriber sees the notices in order,
// so the first one it gets is the second key's.
func TestNoNoticeWithoutWaiters(t *testing.T) {
	rd := testenv.StartRedis(t)
	ctx := context.Background()
	sub := rd.Client(t).PSubscribe(ctx, donePrefix+"*")
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	a, b := New(rd.Client(t)), New(rd.Client(t))
	t.Cleanup(a.Close)
	t.Cleanup(b.Close)
	const alone, shared = "regcap:v2:manifest_digest:example.test/alone:v1", "regcap:v2:manifest_digest:example.test/shared:v1"

	cl := a.GetOrLock(ctx, alone, time.Minute)
	cl.Lease.Store(ctx, entryOf("alone", time.Now()))
	// A refresh (Lock, which takes the lock whatever the value) that
	// nobody waits for publishes nothing either.
	cl = a.Lock(ctx, alone, time.Minute, time.Now())
	if cl.Lease == nil {
		t.Fatalf("refresh lock: %+v, want the lease", cl)
	}
	cl.Lease.Store(ctx, entryOf("alone, refreshed", time.Now()))
	cl = a.GetOrLock(ctx, shared, time.Minute)
	w := b.GetOrLock(ctx, shared, time.Minute)
	if w.Waiter == nil {
		t.Fatalf("b: %+v, want to wait", w)
	}
	cl.Lease.Store(ctx, entryOf("shared", time.Now()))
	if v := w.Waiter.Wait(ctx, 20*time.Second); v == nil || string(v.Found.Body) != "shared" {
		t.Fatalf("b's verdict %+v", v)
	}
	m, err := sub.ReceiveMessage(ctx)
	testenv.Must(t, err, "receiving")
	if m.Channel != doneChannel(shared) {
		t.Fatalf("first notice on %q, want %q: the unshared miss published", m.Channel, doneChannel(shared))
	}
}

// TestSplicedNoticeValueIsRead: a notice signed by the fleet with another
// value attached than the one it describes (an old answer of the same
// key, validly signed, spliced in by someone who can publish) is not
// answered from: the waiter reads the key's value from Redis.
func TestSplicedNoticeValueIsRead(t *testing.T) {
	rd := testenv.StartRedis(t)
	ctx := context.Background()
	secret := []byte("fleet secret")
	rdb := rd.Client(t)
	waiter := New(rd.Client(t), WithCacheKey(secret))
	t.Cleanup(waiter.Close)
	const key = "regcap:v2:manifest_digest:example.test/app:v1"

	testenv.Must(t, rdb.SetNX(ctx, lockKey(key), "another worker", time.Minute).Err(), "planting the lock")
	w := waiter.GetOrLock(ctx, key, time.Minute)
	if w.Waiter == nil {
		t.Fatalf("%+v, want to wait", w)
	}
	now := time.Now()
	current, old := entryOf("current", now), entryOf("old", now.Add(-time.Hour))
	old.Fresh, old.Expires = current.Fresh, current.Expires
	waiter.Set(ctx, key, current)
	ch := doneChannel(key)
	head := sealNotice(ch, notice{OK: true, Fetched: current.Fetched.UnixNano(), Expires: current.Expires.UnixNano()}, secret, now)
	spliced := append(append(head, '\n'), sealEntry(key, old, secret)...)
	testenv.Must(t, rdb.Publish(ctx, ch, spliced).Err(), "publishing")
	v := w.Waiter.Wait(ctx, 20*time.Second)
	if v == nil || !bytes.Equal(v.Found.Body, current.Body) {
		t.Fatalf("verdict %+v, want the value in Redis (%q)", v, current.Body)
	}
}

// TestMarkOutlivesAShortWaiter: the waiters' mark lasts as long as the
// lock may, not as long as the waiter that set it would have held one:
// a holder that releases after the waiter's own hold still tells it.
func TestMarkOutlivesAShortWaiter(t *testing.T) {
	rd := testenv.StartRedis(t)
	ctx := context.Background()
	holder, waiter := New(rd.Client(t)), New(rd.Client(t))
	t.Cleanup(holder.Close)
	t.Cleanup(waiter.Close)
	const key = "regcap:v2:manifest_digest:example.test/slow:v1"
	held := holder.GetOrLock(ctx, key, 10*time.Second)
	w := waiter.GetOrLock(ctx, key, 50*time.Millisecond)
	if held.Lease == nil || w.Waiter == nil {
		t.Fatalf("holder %+v, waiter %+v", held, w)
	}
	time.Sleep(100 * time.Millisecond) // past the waiter's own 50 ms hold
	held.Lease.Fail(ctx, &contract.Error{Code: 404, Message: "example.test/slow:v1: not found"})
	if v := w.Waiter.Wait(ctx, 20*time.Second); v == nil || v.Failure == nil || v.Failure.Code != 404 {
		t.Fatalf("verdict %+v, want the holder's 404", v)
	}
}
