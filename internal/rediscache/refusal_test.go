package rediscache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/internal/testenv"
)

// replyError is an error reply as go-redis returns one.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

func TestRefusalReason(t *testing.T) {
	for _, c := range []struct {
		err    error
		reason string // "" for no refusal
	}{
		{replyError("OOM command not allowed when used memory > 'maxmemory'."), refusedOOM},
		{replyError("READONLY You can't write against a read only replica."), refusedReadOnly},
		{replyError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk."), refusedMisconf},
		{replyError("NOPERM User regcap has no permissions to run the 'set' command"), refusedNoPerm},
		{fmt.Errorf("pipeline: %w", replyError("LOADING Redis is loading the dataset in memory")), refusedOther},
		{redis.Nil, ""},
		{io.EOF, ""},
		{context.DeadlineExceeded, ""},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, ""},
		{errors.New("read: connection reset by peer"), ""},
		{nil, ""},
	} {
		reason, ok := refusalReason(c.err)
		if reason != c.reason || ok != (c.reason != "") {
			t.Errorf("%v: %q %v, want %q", c.err, reason, ok, c.reason)
		}
	}
}

// refusals records what the refused and error hooks are told, and what
// is logged.
type refusals struct {
	mu      sync.Mutex
	refused map[string]int // "op reason"
	errors  []string
	logs    *observer.ObservedLogs
}

func (r *refusals) options() []Option {
	core, logs := observer.New(zap.InfoLevel)
	r.logs, r.refused = logs, map[string]int{}
	return []Option{
		WithRefusedHook(func(op, reason string) { r.mu.Lock(); r.refused[op+" "+reason]++; r.mu.Unlock() }),
		WithErrorHook(func(op string) { r.mu.Lock(); r.errors = append(r.errors, op); r.mu.Unlock() }),
		WithLogger(zap.New(core)),
	}
}

func (r *refusals) count(opReason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused[opReason]
}

func (r *refusals) outages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errors...)
}

// refusalLines is how many times a refusal was logged.
func (r *refusals) refusalLines() int {
	return r.logs.FilterMessageSnippet("redis refused a write").Len()
}

func liveEntry(body string) Entry {
	now := time.Now()
	return Entry{Body: []byte(body), Fetched: now, Fresh: now.Add(time.Minute), Expires: now.Add(time.Hour)}
}

// TestOutOfMemoryIsNotAnOutage: a Redis out of memory under noeviction
// refuses every write, and still serves what it holds. Writes are
// counted per command and logged once; Redis stays available, and reads,
// the lock's release and waiters go on.
func TestOutOfMemoryIsNotAnOutage(t *testing.T) {
	rd := testenv.StartRedis(t)
	admin := rd.Client(t)
	ctx := context.Background()
	rdb, err := NewClient(rd.URL(), ModeSingle) // the worker's own client
	testenv.Must(t, err, "client")
	t.Cleanup(func() { _ = rdb.Close() })
	var r refusals
	c := New(rdb, r.options()...)
	t.Cleanup(c.Close)

	c.Set(ctx, "before", liveEntry("kept"))
	held := c.Lock(ctx, "held", time.Minute, time.Time{})
	if held.Lease == nil {
		t.Fatal("no lease before the refusals")
	}
	testenv.Must(t, admin.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(), "maxmemory-policy")
	testenv.Must(t, admin.ConfigSet(ctx, "maxmemory", "1").Err(), "maxmemory")
	t.Cleanup(func() { admin.ConfigSet(ctx, "maxmemory", "0") })

	for i := range 5 {
		c.Set(ctx, "after"+strconv.Itoa(i), liveEntry("lost"))
	}
	c.SetBackoff(ctx, "after0", time.Minute)
	if claim := c.Lock(ctx, "after0", time.Minute, time.Time{}); claim.Lease != nil || claim.Waiter != nil || claim.Found != nil {
		t.Fatalf("Lock refused by Redis: %+v, want no claim (fetch yourself)", claim)
	}
	if claim := c.Lock(ctx, "before", time.Minute, time.Time{}); claim.Found == nil || string(claim.Found.Body) != "kept" {
		t.Fatalf("Lock refused by Redis on a stored key: %+v, want the value found", claim)
	}
	held.Lease.Store(ctx, liveEntry("lost too"))

	if !c.Available() || len(r.outages()) != 0 {
		t.Fatalf("after refused writes: available %v, outages %v", c.Available(), r.outages())
	}
	for opReason, want := range map[string]int{"set oom": 6, "backoff oom": 1, "lock oom": 2} {
		if got := r.count(opReason); got != want {
			t.Errorf("refusals counted as %q: %d, want %d", opReason, got, want)
		}
	}
	if n := r.refusalLines(); n != 1 {
		t.Errorf("logged %d refusal lines, want 1", n)
	}
	if e, ok := c.Get(ctx, "before"); !ok || string(e.Body) != "kept" {
		t.Fatalf("Get of a value stored before: %q %v", e.Body, ok)
	}
	if _, ok := c.Get(ctx, "after0"); ok {
		t.Fatal("a refused value was stored")
	}
	// The release script only deletes: Redis lets it through, and the
	// lock does not linger for its hold.
	if admin.Exists(ctx, lockKey("held")).Val() != 0 {
		t.Fatal("the lease's lock outlived its release")
	}

	testenv.Must(t, admin.ConfigSet(ctx, "maxmemory", "0").Err(), "maxmemory")
	c.Set(ctx, "later", liveEntry("stored"))
	if e, ok := c.Get(ctx, "later"); !ok || string(e.Body) != "stored" {
		t.Fatalf("after Redis accepts writes again: %q %v", e.Body, ok)
	}
}

// TestReadOnlyReplicaIsNotAnOutage: a Redis that became a replica (a
// failover the client has not followed yet) refuses writes with READONLY
// and serves reads; the worker goes on reading.
func TestReadOnlyReplicaIsNotAnOutage(t *testing.T) {
	rd := testenv.StartRedis(t)
	admin := rd.Client(t)
	ctx := context.Background()
	rdb, err := NewClient(rd.URL(), ModeSingle)
	testenv.Must(t, err, "client")
	t.Cleanup(func() { _ = rdb.Close() })
	var r refusals
	c := New(rdb, r.options()...)
	t.Cleanup(c.Close)

	c.Set(ctx, "before", liveEntry("kept"))
	// A replica of a master that is not there: it keeps its data and
	// serves it (replica-serve-stale-data), and refuses writes.
	testenv.Must(t, admin.ReplicaOf(ctx, "127.0.0.1", strconv.Itoa(testenv.FreePort(t))).Err(), "REPLICAOF")
	t.Cleanup(func() { admin.ReplicaOf(ctx, "NO", "ONE") })

	for range 3 {
		c.Set(ctx, "after", liveEntry("lost"))
	}
	if claim := c.Lock(ctx, "after", time.Minute, time.Time{}); claim != (Claim{}) {
		t.Fatalf("Lock on a replica: %+v, want no claim", claim)
	}
	if !c.Available() || len(r.outages()) != 0 {
		t.Fatalf("after READONLY: available %v, outages %v", c.Available(), r.outages())
	}
	if r.count("set readonly") != 3 || r.count("lock readonly") != 1 || r.refusalLines() != 1 {
		t.Fatalf("refusals %v, %d lines; want 3 set and 1 lock, logged once", r.refused, r.refusalLines())
	}
	if e, ok := c.Get(ctx, "before"); !ok || string(e.Body) != "kept" {
		t.Fatalf("Get on the replica: %q %v", e.Body, ok)
	}
}
