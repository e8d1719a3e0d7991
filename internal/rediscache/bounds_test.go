package rediscache

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/internal/testenv"
)

// TestRejectLogBounded: the log of refused keys costs the same whatever
// the keys' length: a few thousand refused 64 KiB keys (an unbounded
// input) leave the heap where it was.
func TestRejectLogBounded(t *testing.T) {
	r := newRejectLog(time.Now)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	const n, size = 2000, 64 << 10
	for i := range n {
		key := strconv.Itoa(i) + strings.Repeat("x", size)
		if !r.first(key) {
			t.Fatalf("key %d: not logged the first time", i)
		}
	}
	if grew := int64(heap()) - int64(before); grew > 4<<20 {
		t.Fatalf("%d refused keys of %d KiB grew the heap by %d MiB", n, size>>10, grew>>20)
	}
	runtime.KeepAlive(r)
}

// TestRejectLogExpires: a key refused again after rejectLogFor is logged
// again; before, it is not.
func TestRejectLogExpires(t *testing.T) {
	rd := testenv.StartRedis(t)
	rdb := rd.Client(t)
	ctx := context.Background()
	var offset atomic.Int64
	core, logs := observer.New(zap.InfoLevel)
	c := New(rd.Client(t), WithLogger(zap.New(core)),
		WithClock(func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }))
	t.Cleanup(c.Close)
	const key = "regcap:v2:manifest_digest:example.test/app:v1"
	testenv.Must(t, rdb.Set(ctx, key, "not an envelope, long enough to pass the header length check", time.Hour).Err(), "planting")
	lines := func() int { return logs.FilterMessageSnippet("refused a value").Len() }
	for range 3 {
		c.Get(ctx, key)
	}
	if lines() != 1 {
		t.Fatalf("%d lines after three reads, want 1", lines())
	}
	offset.Store(int64(rejectLogFor - time.Second))
	c.Get(ctx, key)
	if lines() != 1 {
		t.Fatalf("%d lines just before the entry expires, want 1", lines())
	}
	offset.Store(int64(rejectLogFor + time.Second))
	c.Get(ctx, key)
	if lines() != 2 {
		t.Fatalf("%d lines after the entry expired, want 2", lines())
	}
}

// TestKeyLengthBound: neither tier keeps a key over MaxKeyLen; one of
// exactly MaxKeyLen is kept.
func TestKeyLengthBound(t *testing.T) {
	rd := testenv.StartRedis(t)
	rdb := rd.Client(t)
	ctx := context.Background()
	c := New(rd.Client(t))
	t.Cleanup(c.Close)
	m := NewMemory(1<<20, nil)
	long, longest := strings.Repeat("k", MaxKeyLen+1), strings.Repeat("k", MaxKeyLen)

	m.Set(long, liveEntry("v"))
	if _, ok := m.Get(long); ok {
		t.Fatal("memory tier kept a key over MaxKeyLen")
	}
	m.Set(longest, liveEntry("v"))
	if _, ok := m.Get(longest); !ok {
		t.Fatal("memory tier did not keep a key of MaxKeyLen")
	}

	c.Set(ctx, long, liveEntry("v"))
	c.SetBackoff(ctx, long, time.Minute)
	if claim := c.Lock(ctx, long, time.Minute, time.Time{}); claim != (Claim{}) {
		t.Fatalf("Lock on a key over MaxKeyLen: %+v", claim)
	}
	if n := rdb.DBSize(ctx).Val(); n != 0 {
		t.Fatalf("a key over MaxKeyLen put %d keys in Redis", n)
	}
	c.Set(ctx, longest, liveEntry("v"))
	if _, ok := c.Get(ctx, longest); !ok {
		t.Fatal("Redis tier did not keep a key of MaxKeyLen")
	}
}
